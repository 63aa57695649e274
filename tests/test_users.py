"""Accounts: argon2 hashes, lockout after failed logins, sessions that end, the `rankloop users` commands."""

import pytest
from click.testing import CliRunner

from store.audit import list_events
from store.db import read, transaction, write
from store.settings import get_settings, set_setting
from store.users import add_user, deactivate_user, end_session, get_user, list_users, login, reset_user, session_user

pytestmark = pytest.mark.both_backends


def _one(db, sql, params=()):
    return read(db, lambda con: con.execute(sql, list(params)).fetchone())


def test_password_is_stored_as_argon2id_and_login_starts_a_session(workspace):
    add_user(workspace.db, "ana", "reviewer", "correct horse", actor="test")
    (stored,) = _one(workspace.db, "SELECT password_hash FROM reviewers WHERE name = 'ana'")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    result = login(workspace.db, "ana", "correct horse")
    assert result.user.name == "ana" and result.user.role == "reviewer" and result.token
    assert session_user(workspace.db, result.token).name == "ana"
    (token_hash,) = _one(workspace.db, "SELECT token_hash FROM sessions")
    assert result.token not in token_hash  # only the hash of the token is kept
    assert [e["action"] for e in list_events(workspace.db, actor="ana")] == ["login"]


def test_short_password_and_bad_role_are_refused(workspace):
    with pytest.raises(ValueError, match="at least 8"):
        add_user(workspace.db, "bo", "reviewer", "short", actor="test")
    with pytest.raises(ValueError, match="role must be one of"):
        add_user(workspace.db, "bo", "owner", "long enough", actor="test")
    add_user(workspace.db, "bo", "admin", "long enough", actor="test")
    with pytest.raises(ValueError, match="already exists"):
        add_user(workspace.db, "bo", "admin", "long enough", actor="test")


def test_wrong_password_and_unknown_name_get_the_same_message(workspace):
    add_user(workspace.db, "ana", "reviewer", "correct horse", actor="test")
    wrong = login(workspace.db, "ana", "battery staple")
    unknown = login(workspace.db, "nobody", "battery staple")
    assert wrong.user is None and unknown.user is None and wrong.message == unknown.message
    actions = [e["action"] for e in list_events(workspace.db, action="login")]
    assert actions == ["login.failed", "login.failed"]


def test_failed_logins_lock_the_account_then_reset_unlocks(workspace):
    add_user(workspace.db, "ana", "reviewer", "correct horse", actor="test")
    set_setting(workspace.db, "max_failed_logins", 3, actor="admin")
    for _ in range(3):
        assert login(workspace.db, "ana", "nope nope nope").user is None
    locked = login(workspace.db, "ana", "correct horse")  # the right password no longer helps while locked
    assert locked.user is None and "try again in" in locked.message
    assert get_user(workspace.db, "ana").failed_logins == 3
    assert list_events(workspace.db, action="login.locked")
    reset_user(workspace.db, "ana", "new password!", actor="admin")
    assert login(workspace.db, "ana", "new password!").user is not None
    assert get_user(workspace.db, "ana").failed_logins == 0


def test_logout_and_deactivation_end_sessions(workspace):
    add_user(workspace.db, "ana", "reviewer", "correct horse", actor="test")
    first = login(workspace.db, "ana", "correct horse").token
    second = login(workspace.db, "ana", "correct horse").token
    end_session(workspace.db, first)
    assert session_user(workspace.db, first) is None
    assert session_user(workspace.db, second) is not None
    deactivate_user(workspace.db, "ana", actor="admin")
    assert session_user(workspace.db, second) is None
    assert login(workspace.db, "ana", "correct horse").user is None
    assert {"logout", "user.deactivate"} <= {e["action"] for e in list_events(workspace.db)}


def test_idle_session_expires(workspace):
    add_user(workspace.db, "ana", "reviewer", "correct horse", actor="test")
    token = login(workspace.db, "ana", "correct horse").token
    with transaction(workspace.db) as con:
        con.execute("UPDATE sessions SET last_seen_at = last_seen_at - INTERVAL '2 hours'")
    assert get_settings(workspace.db)["session_idle_minutes"] == 60
    assert session_user(workspace.db, token) is None
    (reason,) = _one(workspace.db, "SELECT end_reason FROM sessions")
    assert reason == "idle"


def test_a_server_that_keeps_sessions_still_ends_them_on_logout_deactivation_and_idle(workspace, monkeypatch):
    """`rankloop serve` holds the database and keeps what session_context read; every way a session ends still
    ends it there, and its periodic touch reaches the database."""
    import store.users as users
    from store.db import hold

    hold(True)
    try:
        add_user(workspace.db, "ana", "reviewer", "correct horse", actor="test")
        tokens = [login(workspace.db, "ana", "correct horse").token for _ in range(3)]
        assert all(session_user(workspace.db, t).name == "ana" for t in tokens)  # now kept
        clock = [users.time.monotonic()]
        monkeypatch.setattr(users.time, "monotonic", lambda: clock[0])
        clock[0] += 45  # past the 30 s touch interval: the row is touched and the kept idle time starts again
        assert session_user(workspace.db, tokens[0]) is not None
        idle = read(workspace.db, lambda con: con.execute(
            "SELECT CAST(extract(epoch FROM localtimestamp - last_seen_at) AS BIGINT) FROM sessions ORDER BY id"
        ).fetchall())
        assert idle[0][0] <= 2 and idle[1][0] <= 2 + 1  # only the first was touched now; the others were at login
        clock[0] += 3 * 3600  # idle for longer than the 60 minutes allowed, as kept in memory
        assert session_user(workspace.db, tokens[1]) is not None  # another server touched it (uncounted): kept
        write(workspace.db, lambda con: con.execute(  # idle in the database too (as a touch writes it: uncounted)
            "UPDATE sessions SET last_seen_at = localtimestamp - INTERVAL '3 hours' "
            "WHERE id = (SELECT max(id) FROM sessions)"), keeps_queue_cache=True)
        assert session_user(workspace.db, tokens[2]) is None
        end_session(workspace.db, tokens[0])  # logout
        assert session_user(workspace.db, tokens[0]) is None
        clock[0] -= 3 * 3600
        assert session_user(workspace.db, tokens[1]) is not None
        deactivate_user(workspace.db, "ana", actor="admin")
        assert session_user(workspace.db, tokens[1]) is None
        reasons = read(workspace.db, lambda con: con.execute(
            "SELECT end_reason FROM sessions ORDER BY id").fetchall())
        assert [r for (r,) in reasons] == ["logout", "deactivated", "idle"]
    finally:
        hold(False)


def test_users_cli_add_list_deactivate_reset(workspace, monkeypatch):
    from rankloop.commands.users import users_group

    runner = CliRunner()
    ws = ["--workspace", str(workspace.root)]
    r = runner.invoke(users_group, ["add", "cara", "--role", "admin", *ws], input="s3cret pass\ns3cret pass\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(users_group, ["add", "dan", "--password-stdin", *ws], input="dan's password\n")
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("RANKLOOP_PASSWORD", "from the env!")
    r = runner.invoke(users_group, ["add", "eve", "--role", "reviewer", *ws])
    assert r.exit_code == 0, r.output
    assert login(workspace.db, "eve", "from the env!").user.role == "reviewer"
    assert login(workspace.db, "dan", "dan's password").user is not None
    r = runner.invoke(users_group, ["list", *ws])
    assert r.exit_code == 0 and "cara" in r.output and "admin" in r.output
    assert runner.invoke(users_group, ["deactivate", "dan", *ws]).exit_code == 0
    assert not get_user(workspace.db, "dan").active
    monkeypatch.delenv("RANKLOOP_PASSWORD")
    r = runner.invoke(users_group, ["reset", "dan", "--password-stdin", *ws], input="another one\n")
    assert r.exit_code == 0, r.output
    assert get_user(workspace.db, "dan").active and login(workspace.db, "dan", "another one").user
    r = runner.invoke(users_group, ["add", "fay", "--password-stdin", *ws], input="short\n")
    assert r.exit_code == 1 and "at least 8" in r.output
    assert [u.name for u in list_users(workspace.db)] == ["cara", "dan", "eve"]
    assert {"user.add", "user.deactivate", "user.reset"} <= {e["action"] for e in list_events(workspace.db)}
