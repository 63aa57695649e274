"""The ranking page keeps one meaning per key and never loses work (AppTest, read back from the real database;
the tests about drafts, undo and leases also on PostgreSQL).

Two answers: the last choice wins. Four answers: changing one's mind keeps every answer ranked. Undo brings back
the whole answer. A draft survives a reload (a new browser session with the same login). Admins land on Overview
and lease nothing until they choose to review; the Queue page lists and releases leases.
"""

import pytest

from store.db import read
from store.queue import active_leases
from store.users import add_user, login
from tests.test_app_login import app, button, texts
from tests.test_app_rank import _judgments, _selector
from tests.test_queue import seed_comparisons


def _session(ws, monkeypatch, token):
    """A browser session already logged in with `token` (what the cookie gives a reload or a new tab)."""
    at = app(ws, monkeypatch)
    at.session_state["token"] = token
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def rita(workspace):
    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    return login(workspace.db, "rita", "rita's password").token


def _item(at):
    return at.session_state["item"]


def _shown(at):
    return [rid for rid, _ in _item(at).responses]


@pytest.mark.parametrize("keys, stored", [
    (["A better", "A better"], "a"),     # pressing 1 twice is still A better
    (["A better", "B better"], "b"),     # a change of mind to B is B
    (["Tie", "A better"], "a"),
    (["Both bad", "B better"], "b"),
    (["B better", "Both bad"], "bad"),
    (["B better", "Tie"], "tie"),
])
def test_two_answers_last_press_wins(workspace, rita, monkeypatch, keys, stored):
    seed_comparisons(workspace.db, 1, k=2)
    at = _session(workspace, monkeypatch, rita)
    a, b = _shown(at)
    for label in keys:
        button(at, label).click().run()
    assert button(at, keys[-1]).proto.type == "primary"  # the active choice shows selected
    assert sum(x.proto.type == "primary" for x in at.button if x.label in
               ("A better", "B better", "Tie", "Both bad")) == 1
    button(at, "Submit").click().run()
    (row,) = _judgments(workspace.db)
    expect = {"a": [[a], [b]], "b": [[b], [a]], "tie": [[a, b]], "bad": None}[stored]
    assert row["ranking"] == expect and row["all_bad"] == (stored == "bad")


def test_clear_on_two_answers(workspace, rita, monkeypatch):
    seed_comparisons(workspace.db, 1, k=2)
    at = _session(workspace, monkeypatch, rita)
    button(at, "B better").click().run()
    button(at, "Clear").click().run()
    assert "**Your choice:** `not chosen yet`" in texts(at)
    button(at, "Submit").click().run()
    assert "Rank every answer first" in texts(at) and _judgments(workspace.db) == []


def test_four_answers_change_of_mind(workspace, rita, monkeypatch):
    seed_comparisons(workspace.db, 1, k=4)
    at = _session(workspace, monkeypatch, rita)
    a, b, c, d = _shown(at)
    for label in ("A next", "B next", "C next"):
        button(at, label).click().run()
    assert "A > B > C > D" in texts(at)
    button(at, "B next").click().run()  # B again: to the end
    assert "A > C > D > B" in texts(at)
    button(at, "B next").click().run()  # and again: stays complete
    assert "A > C > D > B" in texts(at)
    assert [_selector(at, r).value for r in (a, b, c, d)] == [1, 4, 2, 3]
    button(at, "Submit").click().run()
    assert _judgments(workspace.db)[0]["ranking"] == [[a], [c], [d], [b]]


@pytest.mark.both_backends
def test_undo_brings_back_the_whole_answer(workspace, rita, monkeypatch):
    ids = seed_comparisons(workspace.db, 2, k=3)
    at = _session(workspace, monkeypatch, rita)
    first = _shown(at)
    button(at, "C next").click().run()
    button(at, "A next").click().run()
    lease = _item(at).lease_id
    at.text_area(key=f"edit:{lease}").input("A better answer.")
    at.text_input(key=f"why:{lease}").input("C is precise")
    at.button_group(key=f"flags:{lease}").set_value(["off_topic"])
    at.run()
    button(at, "Submit").click().run()
    assert _item(at).comparison_id == ids[1]
    button(at, "Undo last submit").click().run()
    back = _item(at)
    assert back.comparison_id == ids[0]
    assert "C > A > B" in texts(at)
    assert at.text_area(key=f"edit:{back.lease_id}").value == "A better answer."
    assert at.text_input(key=f"why:{back.lease_id}").value == "C is precise"
    assert at.button_group(key=f"flags:{back.lease_id}").value == ["off_topic"]
    button(at, "Submit").click().run()
    rows = _judgments(workspace.db)
    assert rows[0]["retracted"] and not rows[1]["retracted"]
    assert rows[1]["ranking"] == [[first[2]], [first[0]], [first[1]]] == rows[0]["ranking"]
    assert rows[1]["edited_text"] == "A better answer." and rows[1]["flags"] == ["off_topic"]


@pytest.mark.both_backends
def test_a_draft_survives_a_reload(workspace, rita, monkeypatch):
    ids = seed_comparisons(workspace.db, 2, k=3)
    at = _session(workspace, monkeypatch, rita)
    shown = _shown(at)
    button(at, "B next").click().run()
    lease = _item(at).lease_id
    at.text_input(key=f"why:{lease}").input("B answers it").run()
    at.button_group(key=f"flags:{lease}").set_value(["unsafe"]).run()
    reloaded = _session(workspace, monkeypatch, rita)  # a new browser session: reload, new tab, or a restart
    assert _item(reloaded).comparison_id == ids[0] and _item(reloaded).lease_id == lease
    assert "B · not ranked yet: A, C" in texts(reloaded)
    assert reloaded.text_input(key=f"why:{lease}").value == "B answers it"
    assert reloaded.button_group(key=f"flags:{lease}").value == ["unsafe"]
    button(reloaded, "A next").click().run()
    button(reloaded, "Submit").click().run()
    (row,) = _judgments(workspace.db)
    assert row["ranking"] == [[shown[1]], [shown[0]], [shown[2]]] and row["rationale"] == "B answers it"


def test_admin_lands_on_overview_and_leases_nothing_until_reviewing(workspace, monkeypatch):
    seed_comparisons(workspace.db, 1, k=2)
    add_user(workspace.db, "adam", "admin", "adam's password", actor="test")
    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    adam = _session(workspace, monkeypatch, login(workspace.db, "adam", "adam's password").token)
    assert adam.title[0].value == "Overview"
    adam.switch_page("app_pages/rank.py").run()
    assert "Start reviewing" in [b.label for b in adam.button] and active_leases(workspace.db) == []
    rita = _session(workspace, monkeypatch, login(workspace.db, "rita", "rita's password").token)
    assert _item(rita) is not None  # the one item is hers, not held by the admin who looked
    button(adam, "Start reviewing").click().run()
    assert "the 1 item(s) left for you are being ranked by other reviewers" in texts(adam)
    assert "Your queue is empty" not in texts(adam)


@pytest.mark.both_backends
def test_queue_page_lists_and_releases_leases(workspace, rita, monkeypatch):
    seed_comparisons(workspace.db, 1, k=2)
    at = _session(workspace, monkeypatch, rita)
    lease = _item(at).lease_id
    add_user(workspace.db, "adam", "admin", "adam's password", actor="test")
    adam = _session(workspace, monkeypatch, login(workspace.db, "adam", "adam's password").token)
    adam.switch_page("app_pages/queue.py").run()
    frame = next(d.value for d in adam.dataframe if "lease" in d.value.columns)
    assert list(frame["lease"]) == [lease] and list(frame["reviewer"]) == ["rita"]
    adam.selectbox(key="release_lease_pick").select(lease).run()
    button(adam, "Release lease").click().run()
    assert active_leases(workspace.db) == []
    button(at, "A better").click().run()
    button(at, "Submit").click().run()
    assert "no longer" in texts(at) and _judgments(workspace.db) == []


@pytest.mark.both_backends
def test_leases_go_back_when_the_last_session_ends(workspace, rita, monkeypatch):
    from store.users import end_session

    seed_comparisons(workspace.db, 1, k=2)
    second = login(workspace.db, "rita", "rita's password").token  # another browser
    _session(workspace, monkeypatch, rita)
    end_session(workspace.db, second)
    assert len(active_leases(workspace.db)) == 1  # the first browser still shows it
    end_session(workspace.db, rita)
    assert active_leases(workspace.db) == []
    outcomes = read(workspace.db, lambda con: con.execute("SELECT outcome FROM leases").fetchall())
    assert outcomes == [("released",)]


@pytest.mark.parametrize("field, value, message", [
    ("why", "x" * 10_001, "rationale: 10,001 characters"),
    ("edit", "an answer\0with a NUL", "edited_text: contains a NUL character"),
])
def test_a_draft_with_text_a_judgment_refuses_is_not_kept(workspace, rita, monkeypatch, field, value, message):
    from tests.conftest import table_hash

    seed_comparisons(workspace.db, 1, k=2)
    at = _session(workspace, monkeypatch, rita)
    button(at, "A better").click().run()
    before = table_hash(workspace.db)
    widget = at.text_input if field == "why" else at.text_area
    widget(key=f"{field}:{_item(at).lease_id}").input(value).run()
    assert f"Not kept as a draft: {message}" in texts(at)
    assert table_hash(workspace.db) == before
