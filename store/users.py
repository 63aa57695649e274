"""Accounts that log in to the app: argon2id password hashes, per-user lockout after failed logins, sessions.

No account exists until an admin creates it, and none has a default password. Hashing (tens of milliseconds,
64 MiB) runs outside any database transaction. A session is a random token held by the browser session; the
database keeps only its sha256, and a session ends on logout, after `session_idle_minutes` without activity,
after `session_max_hours`, or as soon as its account is deactivated.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from store.audit import log_event
from store.db import change_count, read, write
from store.queue import release_reviewer_leases
from store.settings import settings_in

ROLES = ("reviewer", "admin")
MIN_PASSWORD_LENGTH = 8
MAX_LOCKOUT_S = 3600
_NAME = re.compile(r"[\w.@-]{1,64}")
_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile: t=3, m=64 MiB, p=4


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the name is unknown, so that such a login takes as long as a real one."""
    return _hasher.hash("not a password: equalizes the time of a login with an unknown name")


@dataclass
class User:
    id: int
    name: str
    role: str
    active: bool
    kind: str = "human"
    last_login_at: object = None
    locked_until: object = None
    failed_logins: int = 0


@dataclass
class LoginResult:
    user: User | None
    token: str | None
    message: str  # what the login page shows; never says whether the name exists


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password: at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def _check_name_role(name: str, role: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError("user name: 1 to 64 letters, digits or . _ @ - (no spaces)")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")


def add_user(db: str | Path, name: str, role: str, password: str, actor: str) -> int:
    """Create a human account that can log in; returns its reviewer id."""
    _check_name_role(name, role)
    hashed = hash_password(password)

    def work(con: duckdb.DuckDBPyConnection) -> int:
        if con.execute("SELECT 1 FROM reviewers WHERE name = ?", [name]).fetchone():
            raise ValueError(f"a reviewer named {name!r} already exists")
        (rid,) = con.execute("SELECT nextval('reviewers_id')").fetchone()
        con.execute(
            "INSERT INTO reviewers (id, name, role, kind, password_hash, active) VALUES (?, ?, ?, 'human', ?, true)",
            [rid, name, role, hashed],
        )
        log_event(con, actor, "user.add", {"name": name, "role": role})
        return int(rid)

    return write(db, work)


_USER_COLS = "id, name, role, active, kind, last_login_at, locked_until, coalesce(failed_logins, 0)"


def list_users(db: str | Path, include_imported: bool = False) -> list[User]:
    sql = f"SELECT {_USER_COLS} FROM reviewers WHERE CAST(? AS BOOLEAN) OR kind = 'human' ORDER BY name"
    return [User(*r) for r in read(db, lambda con: con.execute(sql, [include_imported]).fetchall())]


def get_user(db: str | Path, name: str) -> User | None:
    rows = read(db, lambda con: con.execute(f"SELECT {_USER_COLS} FROM reviewers WHERE name = ?", [name]).fetchall())
    return User(*rows[0]) if rows else None


def _human(con: duckdb.DuckDBPyConnection, name: str) -> int:
    row = con.execute("SELECT id FROM reviewers WHERE name = ? AND kind = 'human'", [name]).fetchone()
    if row is None:
        raise ValueError(f"no account named {name!r} (see `rankloop users list`)")
    return int(row[0])


def deactivate_user(db: str | Path, name: str, actor: str) -> None:
    """The account can no longer log in; its open sessions end now. Its judgments stay."""

    def work(con: duckdb.DuckDBPyConnection) -> None:
        rid = _human(con, name)
        con.execute("UPDATE reviewers SET active = false WHERE id = ?", [rid])
        con.execute(
            "UPDATE sessions SET ended_at = current_timestamp, end_reason = 'deactivated' "
            "WHERE reviewer_id = ? AND ended_at IS NULL",
            [rid],
        )
        release_reviewer_leases(con, rid)
        log_event(con, actor, "user.deactivate", {"name": name})

    write(db, work)


def reset_user(db: str | Path, name: str, password: str, actor: str, role: str | None = None) -> None:
    """Set a new password, clear the lockout, reactivate, end open sessions (and change the role when given)."""
    if role is not None:
        _check_name_role(name, role)
    hashed = hash_password(password)

    def work(con: duckdb.DuckDBPyConnection) -> None:
        rid = _human(con, name)
        con.execute(
            "UPDATE reviewers SET password_hash = ?, failed_logins = 0, locked_until = NULL, active = true, "
            "role = coalesce(CAST(? AS VARCHAR), role) WHERE id = ?",
            [hashed, role, rid],
        )
        con.execute(
            "UPDATE sessions SET ended_at = current_timestamp, end_reason = 'password reset' "
            "WHERE reviewer_id = ? AND ended_at IS NULL",
            [rid],
        )
        release_reviewer_leases(con, rid)
        log_event(con, actor, "user.reset", {"name": name, **({"role": role} if role else {})})

    write(db, work)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def login(db: str | Path, name: str, password: str) -> LoginResult:
    """Check a password; rate-limited per account. A success starts a session and returns its token."""
    refused = LoginResult(None, None, "Wrong name or password.")
    row = read(db, lambda con: con.execute(
        "SELECT id, password_hash, active, locked_until > localtimestamp, "
        "CAST(extract(epoch FROM date_trunc('second', locked_until) - date_trunc('second', localtimestamp)) "
        "AS BIGINT) FROM reviewers "
        "WHERE name = ? AND kind = 'human'", [name]).fetchone())
    if row is None or not row[2] or row[1] is None:
        try:
            _hasher.verify(_dummy_hash(), password)
        except VerificationError:
            pass
        write(db, lambda con: log_event(con, name, "login.failed", {"reason": "unknown or inactive account"}))
        return refused
    rid, stored, _, locked, wait_s = row
    if locked:
        write(db, lambda con: log_event(con, name, "login.locked", {"retry_in_s": int(wait_s)}))
        return LoginResult(None, None, f"Too many failed logins: try again in {int(wait_s) + 1} s.")
    try:
        ok = _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok:

        def fail(con: duckdb.DuckDBPyConnection) -> None:
            s = settings_in(con)
            (n,) = con.execute(
                "UPDATE reviewers SET failed_logins = coalesce(failed_logins, 0) + 1 WHERE id = ? "
                "RETURNING failed_logins", [rid]).fetchone()
            over = n - s["max_failed_logins"]
            if over >= 0:
                lock_s = min(MAX_LOCKOUT_S, s["lockout_s"] * 2**min(over, 20))
                con.execute(
                    "UPDATE reviewers SET locked_until = localtimestamp "
                    "+ CAST(? AS DOUBLE PRECISION) * INTERVAL '1 second' WHERE id = ?",
                    [float(lock_s), rid],
                )
            log_event(con, name, "login.failed", {"reason": "wrong password", "failed_in_a_row": n})

        write(db, fail)
        return refused
    rehash = _hasher.hash(password) if _hasher.check_needs_rehash(stored) else None
    token = secrets.token_urlsafe(32)
    user = write(db, lambda con: _start_session(con, rid, name, token, rehash=rehash))
    return LoginResult(user, token, "Logged in.")


def _start_session(con: duckdb.DuckDBPyConnection, rid: int, name: str, token: str, rehash: str | None = None,
                   via: str | None = None) -> User:
    """A new session for account `rid` (the caller checked who it is): one `login` audit row."""
    con.execute(
        "UPDATE reviewers SET failed_logins = 0, locked_until = NULL, last_login_at = localtimestamp, "
        "password_hash = coalesce(CAST(? AS VARCHAR), password_hash) WHERE id = ?",
        [rehash, rid],
    )
    con.execute(
        "INSERT INTO sessions (id, token_hash, reviewer_id) VALUES (nextval('sessions_id'), ?, ?)",
        [_token_hash(token), rid],
    )
    log_event(con, name, "login", {"via": via} if via else {})
    return User(*con.execute(f"SELECT {_USER_COLS} FROM reviewers WHERE id = ?", [rid]).fetchone())


def sso_login(db: str | Path, name: str, subject: str) -> LoginResult:
    """A session for the account that a single sign-on identity names (no account or an inactive one: refused).

    `name` is the identity's account claim (e.g. its email), `subject` the provider's id for the audit log. The
    provider checked the password; the account's own lockout does not apply, its role does.
    """
    row = read(db, lambda con: con.execute(
        "SELECT id, active FROM reviewers WHERE name = ? AND kind = 'human'", [name]).fetchone())
    if row is None or not row[1]:
        write(db, lambda con: log_event(con, name or "(no claim)", "login.failed",
                                        {"via": "sso", "subject": subject, "reason": "no active account"}))
        return LoginResult(None, None, f"No active rankloop account is named {name!r}: ask an admin to add it "
                                       f"(rankloop users add {name or 'NAME'}).")
    token = secrets.token_urlsafe(32)
    return LoginResult(write(db, lambda con: _start_session(con, row[0], name, token, via="sso")), token,
                       "Logged in.")


def session_user(db: str | Path, token: str | None, touch_after_s: int = 30) -> User | None:
    """The user of a live session, or None (and the session is ended) when it expired or the account is off."""
    return session_context(db, token, touch_after_s)[0]


@dataclass
class _Seen:
    """A session as read at monotonic time `at`, valid while the holding process counts no change (store.db)."""
    changes: tuple[int, int]
    row: tuple
    settings: dict
    at: float


_seen: dict[tuple[str, str], _Seen] = {}
_seen_lock = threading.Lock()


def session_context(db: str | Path, token: str | None, touch_after_s: int = 30) -> tuple[User | None, dict]:
    """`session_user` and the workspace settings, read on one connection (the app asks on every click).

    A process that holds the database (`rankloop serve`) keeps what it read until any other write is counted
    (store.db.change_count): logout, expiry, deactivation and settings all count; its own touch (below) does not,
    and moves the kept time on."""
    if not token:
        return None, {}
    th = _token_hash(token)
    sql = (
        "SELECT s.id, s.ended_at IS NOT NULL, "
        "CAST(extract(epoch FROM date_trunc('second', localtimestamp) - date_trunc('second', s.last_seen_at)) "
        "AS BIGINT), "
        "CAST(extract(epoch FROM date_trunc('second', localtimestamp) - date_trunc('second', s.created_at)) "
        "AS BIGINT), r.id, r.name, r.role, r.active, r.kind, "
        "r.last_login_at, r.locked_until, coalesce(r.failed_logins, 0) "
        "FROM sessions s JOIN reviewers r ON r.id = s.reviewer_id WHERE s.token_hash = ?"
    )

    def look(con: duckdb.DuckDBPyConnection):
        return con.execute(sql, [th]).fetchone(), settings_in(con)

    key = (os.path.abspath(db), th)
    changes = change_count(db)
    with _seen_lock:
        seen = _seen.get(key)
    now = time.monotonic()
    kept = seen is not None and seen.changes == changes
    if kept:
        ran = int(now - seen.at)
        row, s = (*seen.row[:2], seen.row[2] + ran, seen.row[3] + ran, *seen.row[4:]), seen.settings
        if row[2] > s["session_idle_minutes"] * 60:
            # Idle by what this process kept: another server (team mode) may have touched it since, and its
            # touch counts no change. Ask the database before ending it.
            row, s = read(db, look)
            if row is not None:
                with _seen_lock:
                    _seen[key] = _Seen(changes, row, s, now)
    else:
        row, s = read(db, look)
        if changes is not None and row is not None:
            with _seen_lock:
                if len(_seen) > 10_000:
                    _seen.clear()
                _seen[key] = _Seen(changes, row, s, now)
    if row is None or row[1]:
        return None, s
    sid, _, idle_s, age_s, *user_cols = row
    user = User(*user_cols)
    reason = None
    if not user.active:
        reason = "deactivated"
    elif idle_s > s["session_idle_minutes"] * 60:
        reason = "idle"
    elif age_s > s["session_max_hours"] * 3600:
        reason = "expired"
    if reason:
        end_session(db, token, reason)
        return None, s
    if idle_s >= touch_after_s:  # only the session's own row: the queue's view and what is kept above stay
        write(db, lambda con: con.execute(
            "UPDATE sessions SET last_seen_at = localtimestamp WHERE id = ?", [sid]), keeps_queue_cache=True)
        with _seen_lock:
            if key in _seen and _seen[key].changes == changes:
                _seen[key] = _Seen(changes, (*row[:2], 0, age_s, *row[4:]), s, now)
    return user, s


def end_session(db: str | Path, token: str, reason: str = "logout") -> None:
    """End a session (logout or expiry) and log it under the session's user.

    When it was the user's last live session, their open leases go back to the queue (nobody is left to answer
    them); a second browser still logged in keeps its item.
    """

    def work(con: duckdb.DuckDBPyConnection) -> None:
        row = con.execute(
            "SELECT s.id, r.name, r.id FROM sessions s JOIN reviewers r ON r.id = s.reviewer_id "
            "WHERE s.token_hash = ? AND s.ended_at IS NULL",
            [_token_hash(token)],
        ).fetchone()
        if row is None:
            return
        con.execute(
            "UPDATE sessions SET ended_at = localtimestamp, end_reason = ? WHERE id = ?", [reason, row[0]]
        )
        others = con.execute(
            "SELECT count(*) FROM sessions WHERE reviewer_id = ? AND ended_at IS NULL", [row[2]]).fetchone()[0]
        released = 0 if others else release_reviewer_leases(con, row[2])
        log_event(con, row[1], "logout" if reason == "logout" else "session.end",
                  {"reason": reason, **({"leases_released": released} if released else {})})

    write(db, work)
