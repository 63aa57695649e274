"""Security probes: each test tries one attack on the real app (AppTest), store or CLI and checks it fails.

Access control (no login, forged or replayed tokens, deactivated accounts, a reviewer on admin pages, exports or
another reviewer's judgments, query parameters and forged session state), passwords (rate limit, argon2id
parameters and salts), SQL injection (names, filters, import fields), path traversal (export and model paths),
untrusted text (script, HTML and remote images in prompts, responses, edits, rationales and guidelines) and the
audit log (every admin action, in the app and on the command line).
"""

import json
import re

import duckdb
import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from annotate.render import safe_markdown
from rankloop.cli import main
from store.audit import list_events
from store.batch import Batch, Comparison, Prompt, Response, write_batch
from store.db import transaction
from store.judgments import NewJudgment, add_judgment
from store.queue import Answer, next_item, submit
from store.users import User, add_user, deactivate_user, get_user, login
from tests.conftest import table_hash
from tests.test_app_login import APP, PAGES, app, button, log_in, texts

ADMIN_PAGES = ("overview", "agreement", "reviewers", "queue", "jobs", "runs", "export", "audit", "settings")
REVIEWER_PAGES = ("rank", "mine", "guidelines")
XSS = [
    "<script>alert('xss')</script>",
    "<img src=x onerror=alert(1)>",
    "![tracker](https://evil.example/pixel.png)",
    "<iframe src='https://evil.example'></iframe>",
    "[click](javascript:alert(1))",
]


@pytest.fixture
def accounts(workspace):
    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    add_user(workspace.db, "bob", "reviewer", "bob's password!", actor="test")
    add_user(workspace.db, "adam", "admin", "adam's password", actor="test")
    return workspace


def _comparisons(db, texts_: list[str], prompt: str = "question") -> list[int]:
    batch = Batch()
    for i, _ in enumerate(range(1)):
        batch.prompts.append(Prompt(key=i, messages=[{"role": "user", "content": prompt}], text=prompt))
        for j, t in enumerate(texts_):
            batch.responses.append(Response(key=(i, j), prompt_key=i, text=t, model_name=f"secret-model-{j}"))
        batch.comparisons.append(Comparison(key=i, prompt_key=i, response_keys=[(i, j) for j in range(len(texts_))]))
    with transaction(db) as con:
        return write_batch(con, batch).comparison_ids


def _page(name: str, token: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    if token:
        at.session_state["token"] = token
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    return at


def _markdown(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in at.markdown)


# --- access control -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", REVIEWER_PAGES + ADMIN_PAGES)
def test_every_page_without_login_shows_nothing(accounts, monkeypatch, page):
    monkeypatch.setenv("RANKLOOP_WORKSPACE", str(accounts.root))
    at = _page(page)
    assert [w.value for w in at.warning] == ["Please log in."] and not at.title and not at.dataframe


def test_a_forged_token_is_not_a_session(accounts, monkeypatch):
    monkeypatch.setenv("RANKLOOP_WORKSPACE", str(accounts.root))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["token"] = "A" * 43
    at.run()
    assert at.title[0].value == "rankloop" and "token" not in at.session_state


def test_a_deactivated_reviewer_cannot_log_in_and_the_message_does_not_say_why(accounts, monkeypatch):
    deactivate_user(accounts.db, "rita", actor="adam")
    at = log_in(app(accounts, monkeypatch), "rita", "rita's password")
    assert at.title[0].value == "rankloop" and "Wrong name or password." in texts(at)
    assert login(accounts.db, "nobody", "rita's password").message == "Wrong name or password."


def test_a_deactivated_reviewers_token_no_longer_opens_pages(accounts, monkeypatch):
    monkeypatch.setenv("RANKLOOP_WORKSPACE", str(accounts.root))
    token = login(accounts.db, "rita", "rita's password").token
    deactivate_user(accounts.db, "rita", actor="adam")
    for page in REVIEWER_PAGES:
        assert [w.value for w in _page(page, token).warning] == ["Please log in."], page


def test_forged_session_state_does_not_make_a_reviewer_an_admin(accounts, monkeypatch):
    """The client cannot write session state, but a page must not trust it anyway: `user` and the router's
    hand-over are forged here with an admin User and the reviewer's own valid token."""
    monkeypatch.setenv("RANKLOOP_WORKSPACE", str(accounts.root))
    token = login(accounts.db, "rita", "rita's password").token
    fake = User(id=get_user(accounts.db, "rita").id, name="rita", role="admin", active=True)
    for page in ADMIN_PAGES:
        at = _page(page, token, user=fake, _checked=(token, fake), _handover=(token, fake))
        assert [e.value for e in at.error] == ["This page is for admins only."], page
        assert not at.title, page


def test_query_parameters_do_not_open_admin_pages_or_other_reviewers_judgments(accounts, monkeypatch):
    cid = _comparisons(accounts.db, ["a", "b"])[0]
    add_judgment(accounts.db, NewJudgment(cid, "bob", "bob-1", all_bad=True, rationale="BOB-SECRET-RATIONALE"))
    monkeypatch.setenv("RANKLOOP_WORKSPACE", str(accounts.root))
    at = AppTest.from_file(str(APP), default_timeout=60)
    for k, v in {"page": "export", "reviewer": "bob", "user": "adam", "role": "admin", "embed": "true"}.items():
        at.query_params[k] = v
    at.run()
    log_in(at, "rita", "rita's password")
    assert at.title[0].value == "Rank the answers"
    at.switch_page(str(PAGES / "mine.py")).run()
    shown = texts(at) + "".join(str(d.value) for d in at.dataframe)
    assert "BOB-SECRET-RATIONALE" not in shown
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(str(PAGES / "export.py"))


def test_my_judgments_shows_only_mine(accounts, monkeypatch):
    cid = _comparisons(accounts.db, ["a", "b"])[0]
    add_judgment(accounts.db, NewJudgment(cid, "bob", "bob-1", all_bad=True, rationale="BOB-SECRET"))
    add_judgment(accounts.db, NewJudgment(cid, "rita", "rita-1", all_bad=True, rationale="RITA-OWN"))
    at = log_in(app(accounts, monkeypatch), "rita", "rita's password")
    at.switch_page(str(PAGES / "mine.py")).run()
    frame = at.dataframe[0].value
    assert list(frame["rationale"]) == ["RITA-OWN"]


def test_a_reviewer_cannot_submit_on_another_reviewers_lease(accounts):
    _comparisons(accounts.db, ["a", "b"])
    bob = get_user(accounts.db, "bob")
    item = next_item(accounts.db, bob.id)
    rita = get_user(accounts.db, "rita")
    before = table_hash(accounts.db)
    with pytest.raises(ValueError, match="is not yours"):
        submit(accounts.db, item.lease_id, rita.id, "rita", Answer(ranking=[[r] for r, _ in item.responses]))
    assert table_hash(accounts.db) == before


def test_a_reviewer_never_sees_model_names_before_submitting(accounts, monkeypatch):
    _comparisons(accounts.db, ["first answer", "second answer"])
    at = log_in(app(accounts, monkeypatch), "rita", "rita's password")
    assert "first answer" in texts(at) and "secret-model" not in texts(at) + _markdown(at)


# --- passwords ------------------------------------------------------------------------------------------------


def test_password_brute_force_is_rate_limited_with_a_growing_lockout(accounts):
    results = [login(accounts.db, "rita", f"guess number {i}") for i in range(8)]
    assert all(r.token is None for r in results)
    assert "Too many failed logins" in results[-1].message
    assert login(accounts.db, "rita", "rita's password").token is None  # even the right password, while locked
    actions = [e["action"] for e in list_events(accounts.db, actor="rita")]
    assert actions.count("login.failed") >= 5 and "login.locked" in actions
    con = duckdb.connect(str(accounts.db))
    (wait_s,) = con.execute("SELECT date_diff('second', current_localtimestamp(), locked_until) FROM reviewers "
                            "WHERE name = 'rita'").fetchone()
    con.close()
    assert wait_s >= 10


def test_password_hashes_are_argon2id_memory_hard_and_salted(accounts):
    add_user(accounts.db, "twin", "reviewer", "rita's password", actor="test")
    con = duckdb.connect(str(accounts.db))
    hashes = dict(con.execute("SELECT name, password_hash FROM reviewers WHERE name IN ('rita', 'twin')").fetchall())
    con.close()
    assert hashes["rita"] != hashes["twin"]  # same password, different salts
    for h in hashes.values():
        m = re.fullmatch(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$([^$]+)\$([^$]+)", h)
        assert m, h
        memory_kib, time_cost, _ = map(int, m.groups()[:3])
        assert memory_kib >= 65536 and time_cost >= 2  # 64 MiB or more: memory-hard
        assert len(m.group(4)) >= 22  # 16-byte salt
        assert "rita's password" not in h
    assert PasswordHasher().verify(hashes["twin"], "rita's password")


def test_short_passwords_and_odd_names_are_refused(accounts):
    with pytest.raises(ValueError, match="at least 8"):
        add_user(accounts.db, "shorty", "reviewer", "1234567", actor="test")
    with pytest.raises(ValueError, match="user name"):
        add_user(accounts.db, "bad name", "reviewer", "long enough pw", actor="test")


# --- SQL injection --------------------------------------------------------------------------------------------

INJECTIONS = ["x' OR '1'='1", "'; DROP TABLE judgments; --", "rita' --", "\" OR 1=1 --", "rita'/*"]


@pytest.mark.parametrize("name", INJECTIONS)
def test_sql_injection_in_a_login_name_is_just_a_wrong_name(accounts, name):
    before = table_hash(accounts.db)
    r = login(accounts.db, name, "rita's password")
    assert r.token is None and r.message == "Wrong name or password."
    with pytest.raises(ValueError, match="user name"):
        add_user(accounts.db, name, "reviewer", "long enough pw", actor="test")
    con = duckdb.connect(str(accounts.db))
    assert con.execute("SELECT count(*) FROM reviewers").fetchone()[0] == 3
    con.close()
    assert table_hash(accounts.db) != before  # the failed login was audited, nothing else changed


def test_sql_injection_in_export_filters_matches_nothing(accounts, tmp_path):
    cid = _comparisons(accounts.db, ["a", "b"])[0]
    con = duckdb.connect(str(accounts.db))
    a, b = con.execute("SELECT response_ids FROM comparisons WHERE id = ?", [cid]).fetchone()[0]
    con.close()
    add_judgment(accounts.db, NewJudgment(cid, "rita", "r1", ranking=[[a], [b]]))
    for i, bad in enumerate(INJECTIONS):
        out = tmp_path / f"p{i}.jsonl"
        r = CliRunner().invoke(main, ["export", "pairs", "--out", str(out), "--reviewer", bad, "--model", bad,
                                      "-w", str(accounts.root)])
        assert r.exit_code == 0, r.output
        assert out.read_text() == ""  # not every row: the filter is a value, not SQL
    out = tmp_path / "all.jsonl"
    assert CliRunner().invoke(main, ["export", "pairs", "--out", str(out), "-w", str(accounts.root)]).exit_code == 0
    assert len(out.read_text().splitlines()) == 1


def test_sql_injection_in_import_fields_is_stored_verbatim(accounts, tmp_path):
    rows = [{"prompt": p, "source": p[:40], "tags": [p[:20]]} for p in INJECTIONS]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = CliRunner().invoke(main, ["import", "prompts", str(tmp_path / "p.jsonl"), "-w", str(accounts.root)])
    assert r.exit_code == 0, r.output
    con = duckdb.connect(str(accounts.db))
    assert sorted(t for (t,) in con.execute("SELECT text FROM prompts").fetchall()) == sorted(INJECTIONS)
    assert con.execute("SELECT count(*) FROM judgments").fetchone() == (0,)  # the table is still there
    con.close()


# --- path traversal -------------------------------------------------------------------------------------------


def test_export_out_paths_that_traverse_or_replace_are_refused(accounts, tmp_path):
    victim = tmp_path / "victim.jsonl"
    victim.write_text("precious\n")
    cases = [
        (str(tmp_path / "ws" / ".." / "victim.jsonl"), "already exists"),
        (str(tmp_path / "no" / ".." / ".." / "nowhere" / "x.jsonl"), "does not exist"),
        (str(tmp_path / "x.sh"), "unknown output format"),
        (str(tmp_path), "is a directory"),
    ]
    for out, message in cases:
        r = CliRunner().invoke(main, ["export", "pairs", "--out", out, "-w", str(accounts.root)])
        assert r.exit_code != 0 and message in r.output, (out, r.output)
    assert victim.read_text() == "precious\n"


def test_the_app_export_cannot_be_steered_outside_its_temporary_folder(accounts, monkeypatch, tmp_path):
    at = log_in(app(accounts, monkeypatch), "adam", "adam's password")
    at.switch_page(str(PAGES / "export.py")).run()
    target = tmp_path / "evil"
    at.session_state["export_kind"] = f"../../../../../../..{target}"
    with pytest.raises(ValueError, match="is not in list"):  # Streamlit refuses a value outside the options
        button(at, "Prepare download").click().run()
    assert not list(tmp_path.glob("evil*"))
    assert "export.download" not in [e["action"] for e in list_events(accounts.db, actor="adam")]


@pytest.mark.parametrize("name, source, message", [
    ("m1", "../../../../etc", "not a model folder"),
    ("m2", "a/../../etc/passwd", "no such model folder"),
    ("../../escape", "org/model", "model name"),
    ("m3", "/etc/passwd", "no such model folder"),
])
def test_model_paths_that_traverse_are_refused(accounts, name, source, message):
    before = table_hash(accounts.db)
    r = CliRunner().invoke(main, ["models", "add", name, source, "-w", str(accounts.root)])
    assert r.exit_code == 1 and message in r.output, r.output
    assert table_hash(accounts.db) == before


# --- untrusted text -------------------------------------------------------------------------------------------


def test_script_html_and_remote_images_in_prompts_and_responses_stay_text(accounts, monkeypatch):
    _comparisons(accounts.db, XSS[:3], prompt=XSS[3] + " " + XSS[4])
    at = log_in(app(accounts, monkeypatch), "rita", "rita's password")
    shown = "\n".join(str(e.value) for e in [*at.text, *at.code])
    for payload in XSS[:3]:
        assert payload in shown  # shown as plain text, verbatim
    md = _markdown(at)
    for bad in ("<script", "onerror", "<iframe", "](https://evil", "javascript:"):
        assert bad not in md


def test_edits_and_rationales_are_never_markdown(accounts, monkeypatch):
    cid = _comparisons(accounts.db, ["a", "b"])[0]
    add_judgment(accounts.db, NewJudgment(cid, "rita", "r1", all_bad=True, rationale=" ".join(XSS),
                                          edited_text=" ".join(XSS)))
    for who, page in (("rita", "mine"), ("adam", "agreement"), ("adam", "queue"), ("adam", "audit")):
        at = log_in(app(accounts, monkeypatch), who, f"{who}'s password")
        at.switch_page(str(PAGES / f"{page}.py")).run()
        assert not at.exception, at.exception
        md = _markdown(at)
        for bad in ("<script", "onerror", "<iframe", "](https://evil", "javascript:"):
            assert bad not in md, (page, bad)


@pytest.mark.parametrize("payload", [
    "![x](https://evil.example/a.png)",
    "![x][ref]\n\n[ref]: https://evil.example/a.png",
    "![x]\n\n[x]: https://evil.example/a.png",
    "![a [nested] alt](https://evil.example/a.png)",
    "![x](<https://evil.example/a b.png>)",
    '![x](https://evil.example/a.png "title")',
    "[![badge](https://evil.example/b.svg)](https://example.com)",
])
def test_guidelines_never_load_a_remote_image(payload):
    """No markdown image survives safe_markdown, in any of CommonMark's image syntaxes."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(safe_markdown(payload))
    images = [c for t in tokens for c in (t.children or []) if c.type == "image"]
    assert images == [], safe_markdown(payload)


def test_guidelines_with_payloads_render_without_html_or_images(accounts, monkeypatch):
    from store.settings import set_setting

    set_setting(accounts.db, "guidelines", "\n\n".join(XSS) + "\n\n![x]\n\n[x]: https://evil.example/a.png",
                actor="adam")
    at = log_in(app(accounts, monkeypatch), "rita", "rita's password")
    at.switch_page(str(PAGES / "guidelines.py")).run()
    (md,) = [e for e in at.markdown]
    assert md.proto.allow_html is False
    assert "https://evil.example/pixel.png" not in md.value


# --- audit log ------------------------------------------------------------------------------------------------


def test_every_admin_action_in_the_app_is_audited(accounts, monkeypatch):
    from store.agreement import list_gold

    ids = _comparisons(accounts.db, ["a", "b"])
    at = log_in(app(accounts, monkeypatch), "adam", "adam's password")
    at.switch_page(str(PAGES / "reviewers.py")).run()
    at.text_input(key="new_name").input("nina")
    at.text_input(key="new_pw").input("nina's password")
    at.text_input(key="new_pw2").input("nina's password")
    button(at, "Add account").click().run()
    at.selectbox(key="deactivate_name").select("nina")
    button(at, "Deactivate").click().run()
    at.selectbox(key="reset_name").select("nina")
    at.text_input(key="reset_pw").input("a new password")
    button(at, "Reset").click().run()
    at.switch_page(str(PAGES / "settings.py")).run()
    at.text_area(key="setting:guidelines").input("Be kind.")
    button(at, "Save guidelines").click().run()
    at.switch_page(str(PAGES / "queue.py")).run()
    at.number_input(key="steer_n").set_value(2)
    button(at, "Set N").click().run()
    at.switch_page(str(PAGES / "export.py")).run()
    button(at, "Prepare download").click().run()
    assert not at.exception, at.exception
    actions = {e["action"] for e in list_events(accounts.db, actor="adam")}
    assert {"login", "user.add", "user.deactivate", "user.reset", "settings.set", "queue.required_reviewers",
            "export.download"} <= actions, actions
    assert list_gold(accounts.db) == [] and ids


def test_every_admin_action_on_the_command_line_is_audited(accounts, tmp_path, tiny_lm):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "hello"}) + "\n")
    w = ["-w", str(accounts.root)]
    runner = CliRunner(env={"RANKLOOP_PASSWORD": "a long password"})
    for args in (["import", "prompts", str(tmp_path / "p.jsonl")],
                 ["export", "sft", "--out", str(tmp_path / "s.jsonl")],
                 ["models", "add", "tiny", str(tiny_lm)],
                 ["users", "add", "cora", "--role", "reviewer"],
                 ["users", "deactivate", "cora"],
                 ["users", "reset", "cora"],
                 ["backup", str(tmp_path / "bk")]):
        r = runner.invoke(main, [*args, *w])
        assert r.exit_code == 0, (args, r.output)
    actions = {e["action"] for e in list_events(accounts.db) if e["actor"].startswith("cli")}
    assert {"import.prompts", "export.sft", "model.add", "user.add", "user.deactivate", "user.reset",
            "workspace.backup"} <= actions, actions
