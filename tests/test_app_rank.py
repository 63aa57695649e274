"""The ranking page (AppTest), read back from the real database: rank, tie, all bad, edit, skip, undo, double submit.

The tests whose clicks write or read rows in their own way also run on PostgreSQL (`both_backends`); the widget
logic is the same on both backends, so the rest run on DuckDB only (CI time)."""

import json

import pytest

from store.db import read
from store.settings import set_setting
from store.users import add_user
from tests.test_app_login import PAGES, app, button, log_in, texts
from tests.test_queue import seed_comparisons


def _judgments(db):
    rows = read(db, lambda con: con.execute(
        "SELECT comparison_id, ranking, all_bad, skipped, flags, edited_text, rationale, display_order, "
        "time_spent_ms, retracted_at IS NOT NULL, source FROM judgments ORDER BY id").fetchall())
    cols = ["comparison_id", "ranking", "all_bad", "skipped", "flags", "edited_text", "rationale", "display_order",
            "time_spent_ms", "retracted", "source"]
    out = [dict(zip(cols, r, strict=True)) for r in rows]
    for d in out:
        d["ranking"] = json.loads(d["ranking"]) if d["ranking"] else None
    return out


@pytest.fixture
def ranking(workspace, monkeypatch):
    """A reviewer logged in with two 3-answer items and one 2-answer item in their queue."""
    ids = seed_comparisons(workspace.db, 2, k=3) + seed_comparisons(workspace.db, 1, k=2)
    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    at = log_in(app(workspace, monkeypatch), "rita", "rita's password")
    return workspace, at, ids


def _item(at):
    return at.session_state["item"]


def _selector(at, rid):
    """The rank selector of response `rid` (its key changes when keys change the ranks: see rank._selector_key)."""
    lease = _item(at).lease_id
    (sel,) = [g for g in at.button_group if str(g.key).startswith(f"sel:{lease}:{rid}:")]
    return sel


def _rank_as_shown(at):
    """Press A then B (C, if any, is last by elimination): a complete ranking, chosen by the reviewer."""
    button(at, "A next" if len(_item(at).responses) > 2 else "A better").click().run()
    if len(_item(at).responses) > 2:
        button(at, "B next").click().run()


@pytest.mark.both_backends
def test_submit_a_ranking_then_read_the_row(ranking):
    ws, at, ids = ranking
    item = _item(at)
    assert item.comparison_id == ids[0] and "model-" not in texts(at)  # model names never shown
    shown = [rid for rid, _ in item.responses]
    button(at, "B next").click().run()
    assert "B · not ranked yet: A, C" in texts(at)
    button(at, "C next").click().run()  # A is last by elimination
    assert "B > C > A" in texts(at)
    button(at, "Submit").click().run()
    (row,) = _judgments(ws.db)
    assert row["comparison_id"] == ids[0] and row["display_order"] == shown
    assert row["ranking"] == [[shown[1]], [shown[2]], [shown[0]]]
    assert row["time_spent_ms"] >= 0 and row["source"] == "app" and not row["all_bad"]
    assert _item(at).comparison_id == ids[1]  # the next item shows at once
    assert "Done today 1 · total 1 · 2 left in your queue" in texts(at)


def test_rank_selectors_tie(ranking):
    ws, at, ids = ranking
    item = _item(at)
    shown = [rid for rid, _ in item.responses]
    assert all(_selector(at, rid).value is None for rid in shown)  # start empty
    _selector(at, shown[2]).set_value(1).run()
    assert "C · not ranked yet: A, B" in texts(at)
    _selector(at, shown[0]).set_value(1).run()  # C ties with A at rank 1
    _selector(at, shown[1]).set_value(2).run()
    assert "A = C > B" in texts(at)
    button(at, "Submit").click().run()
    assert _judgments(ws.db)[0]["ranking"] == [[shown[0], shown[2]], [shown[1]]]


def test_two_answers_tie_key_and_both_bad(ranking):
    ws, at, ids = ranking
    for _ in range(2):  # get to the 2-answer item
        _rank_as_shown(at)
        button(at, "Submit").click().run()
    item = _item(at)
    assert item.comparison_id == ids[2]
    button(at, "Tie").click().run()
    assert "**Your choice:** `Tie`" in texts(at) and button(at, "Tie").proto.type == "primary"
    assert button(at, "A better").proto.type == "secondary"
    button(at, "Submit").click().run()
    assert _judgments(ws.db)[-1]["ranking"] == [[rid for rid, _ in item.responses]]


def test_all_bad(ranking):
    ws, at, _ = ranking
    button(at, "All bad / cannot rank").click().run()
    assert "all bad / cannot rank" in texts(at)
    button(at, "Submit").click().run()
    (row,) = _judgments(ws.db)
    assert row["all_bad"] and row["ranking"] is None


@pytest.mark.both_backends
def test_edit_flags_and_rationale_are_stored(ranking):
    ws, at, _ = ranking
    item = _item(at)
    _rank_as_shown(at)
    at.text_area(key=f"edit:{item.lease_id}").input("A much better answer.")
    at.text_input(key=f"why:{item.lease_id}").input("A is precise")
    at.button_group(key=f"flags:{item.lease_id}").set_value(["factually_wrong"])
    button(at, "Submit").click().run()
    (row,) = _judgments(ws.db)
    assert row["edited_text"] == "A much better answer." and row["rationale"] == "A is precise"
    assert row["flags"] == ["factually_wrong"]


def test_nothing_is_ranked_until_the_reviewer_ranks(ranking):
    ws, at, _ = ranking
    assert "not ranked yet: A, B, C" in texts(at)  # no order is suggested
    button(at, "Submit").click().run()
    assert "Rank every answer first" in texts(at) and _judgments(ws.db) == []
    button(at, "B next").click().run()
    button(at, "Submit").click().run()  # still two unranked
    assert "Rank every answer first" in texts(at) and _judgments(ws.db) == []


def test_skip_records_a_skip_and_moves_on(ranking):
    ws, at, ids = ranking
    button(at, "Skip").click().run()
    (row,) = _judgments(ws.db)
    assert row["skipped"] and row["ranking"] is None and row["comparison_id"] == ids[0]
    assert _item(at).comparison_id == ids[1]


@pytest.mark.both_backends
def test_undo_brings_the_item_back_and_keeps_the_row(ranking):
    ws, at, ids = ranking
    _rank_as_shown(at)
    button(at, "Submit").click().run()
    assert _item(at).comparison_id == ids[1]
    button(at, "Undo last submit").click().run()
    assert _item(at).comparison_id == ids[0] and "Undone" in texts(at)
    (row,) = _judgments(ws.db)
    assert row["retracted"]  # recorded as undone, not deleted
    _rank_as_shown(at)
    button(at, "Submit").click().run()
    rows = _judgments(ws.db)
    assert len(rows) == 2 and not rows[1]["retracted"] and rows[1]["comparison_id"] == ids[0]
    assert "Done today 1 · total 1" in texts(at)


def test_undo_window_closes(ranking):
    ws, at, _ = ranking
    set_setting(ws.db, "undo_window_s", 0, actor="test")
    _rank_as_shown(at)
    button(at, "Submit").click().run()
    assert button(at, "Undo last submit").disabled


@pytest.mark.both_backends
def test_double_submit_is_stored_once(ranking):
    ws, at, ids = ranking
    first = _item(at)
    _rank_as_shown(at)
    state = {k: at.session_state[k] for k in at.session_state if str(k).endswith(f":{first.lease_id}")}
    button(at, "Submit").click().run()
    # The same submit arrives again (a double click or a retry after a dropped connection): same lease, same key.
    at.session_state["item"] = first
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    button(at, "Submit").click().run()
    rows = _judgments(ws.db)
    assert len(rows) == 1 and rows[0]["comparison_id"] == ids[0]


def test_guidelines_are_one_click_away(ranking):
    ws, at, _ = ranking
    set_setting(ws.db, "guidelines", "Prefer **short, correct** answers.", actor="test")
    at.run()
    assert "Prefer **short, correct** answers." in [m.value for m in at.markdown]


@pytest.mark.both_backends
def test_my_judgments_shows_only_mine(ranking, monkeypatch):
    ws, at, ids = ranking
    add_user(ws.db, "otto", "reviewer", "otto's password", actor="test")
    other = log_in(app(ws, monkeypatch), "otto", "otto's password")
    _rank_as_shown(other)
    button(other, "Submit").click().run()
    button(at, "Skip").click().run()
    at.switch_page(str(PAGES / "mine.py")).run()
    frame = at.dataframe[0].value
    assert list(frame["answer"]) == ["skipped"] and list(frame["item"]) == [ids[0]]


@pytest.mark.both_backends
def test_logout_gives_the_leased_item_back(ranking):
    ws, at, ids = ranking
    lease = _item(at).lease_id
    button(at, "Log out").click().run()
    (outcome,) = read(ws.db, lambda con: con.execute("SELECT outcome FROM leases WHERE id = ?", [lease]).fetchone())
    assert outcome == "released"


def test_clicks_that_reach_the_server_together_are_refused_not_applied_in_some_order(ranking):
    """Streamlit merges clicks that arrive while a run is busy into one run, whose callbacks come in no order of the
    reviewer's (before keys went through annotate.keys, 1-2-3-4 pressed 0-30 ms apart was ranked B > C > D > A).
    Two mouse clicks before one run is that case, made deterministic: neither is applied, the ranking stays as it
    was, and the page says why. (Keys never need this: they come as one ordered list, see below.)"""
    ws, at, _ = ranking
    button(at, "B next").click().run()
    assert "B · not ranked yet: A, C" in texts(at)
    button(at, "C next").click()
    button(at, "A next").click().run()  # both triggers in one run
    shown = texts(at)
    assert "B · not ranked yet: A, C" in shown and "2 clicks arrived together" in shown, shown
    draft = read(ws.db, lambda con: con.execute("SELECT draft FROM leases WHERE closed_at IS NULL").fetchone()[0])
    assert list(json.loads(draft)["ranks"].values()) == [1]  # the kept draft is the ranking shown
    button(at, "C next").click().run()  # one at a time: applied
    assert "B > C > A" in texts(at)
    button(at, "Submit").click()
    button(at, "A next").click().run()  # a submit with another click: only the first acts, on the item shown
    assert "clicks arrived together" in texts(at)


# Keys: the browser component (annotate.keys) sends every key pressed on the item so far, in order, with the lease
# it was pressed on and a sequence number that grows with every send. Here the test is the browser.

NO_ITEM = "none"  # a list sent while no item is shown (its lease is null)


def send_keys(at, keys, seq, lease=None, stream="tab-1"):
    """What the component sends after a key press: the whole list so far (one script run, like the real one)."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    (component,) = [n for n in _walk(at._tree) if getattr(n, "type", None) == "bidi_component"]
    states = at._tree.get_widget_states()
    if lease is None:
        lease = _item(at).lease_id
    msg = {"lease": None if lease == NO_ITEM else lease, "stream": stream, "keys": list(keys), "seq": seq}
    states.widgets.append(WidgetState(id=component.proto.id, json_value=json.dumps({"keys": msg})))
    return at._run(states)


def _walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _walk(child)


def _draft(db):
    (draft,) = read(db, lambda con: con.execute("SELECT draft FROM leases WHERE closed_at IS NULL").fetchone())
    return json.loads(draft)


@pytest.mark.both_backends
def test_keys_in_one_message_and_resent_lists_apply_each_key_once_in_order(workspace, monkeypatch):
    """1-2-3-4 in one message (what a merged run carries) is A > B > C > D; lists sent again (a retry), older lists
    arriving late (a lower seq) and duplicates change nothing; the draft says how far the keys got, so a new session
    on the same lease (a reconnect after a server restart) replays none."""
    (four,) = seed_comparisons(workspace.db, 1, k=4)
    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    at = log_in(app(workspace, monkeypatch), "rita", "rita's password")
    a, b, c, d = [rid for rid, _ in _item(at).responses]
    send_keys(at, ["2"], 1)
    assert "B · not ranked yet: A, C, D" in texts(at)
    send_keys(at, ["2"], 2)  # the same list again: B is not pressed twice (which would move it)
    send_keys(at, ["2", "1", "4"], 4)
    send_keys(at, ["2", "1"], 3)  # an older list arriving late
    assert "B > A > D > C" in texts(at)  # C by elimination, after the last key
    draft = _draft(workspace.db)
    assert draft["ranks"] == {str(b): 1, str(a): 2, str(d): 3, str(c): 4} and draft["keys"] == {"tab-1": 3}
    send_keys(at, ["Backspace", "1", "2", "3", "4"], 1, stream="tab-2")  # another list (a reload): its own count
    assert "A > B > C > D" in texts(at)
    again = log_in(app(workspace, monkeypatch), "rita", "rita's password")  # a new session, same lease, same draft
    send_keys(again, ["Backspace", "1", "2", "3", "4"], 2, stream="tab-2")  # re-sent on reconnect: nothing new
    assert "A > B > C > D" in texts(again)
    send_keys(again, ["Backspace", "1", "2", "3", "4", "Enter", "1"], 3, stream="tab-2")
    assert "1 key(s) pressed after Enter were not applied" in texts(again)  # not on an item not yet seen
    (row,) = _judgments(workspace.db)
    assert row["comparison_id"] == four and row["ranking"] == [[a], [b], [c], [d]]


def test_every_key_through_the_component(ranking):
    """T, X, Backspace, S, U, Enter and the two-answer keys as keys in the list, mixed with a mouse click; a list for
    a lease no longer shown does nothing."""
    ws, at, ids = ranking
    first = _item(at)
    a, b, c = [rid for rid, _ in first.responses]
    send_keys(at, ["3", "T", "1", "X", "2"], 5)
    assert "B · not ranked yet: A, C" in texts(at)  # X cleared the tie; 2 after X ranks B
    send_keys(at, ["3", "T", "1", "X", "2", "Backspace", "3", "T", "1"], 9)
    assert "A = C > B" in texts(at)
    send_keys(at, ["3", "T", "1", "X", "2", "Backspace", "3", "T", "1", "S"], 10)  # skip
    assert _item(at).comparison_id == ids[1] and _judgments(ws.db)[0]["skipped"]
    send_keys(at, ["3", "T", "1", "X", "2", "Backspace", "3", "T", "1", "S", "1"], 11, lease=first.lease_id)
    assert "not ranked yet: A, B, C" in texts(at)  # a key pressed on the item gone is not applied to this one
    assert "1 key(s) pressed before this item showed were not applied" in texts(at)
    send_keys(at, ["U"], 1)  # undo the skip: the first item is back
    assert _item(at).comparison_id == ids[0]
    button(at, "C next").click().run()  # the mouse still works, between keys
    send_keys(at, ["2", "Enter"], 2)
    assert _item(at).comparison_id == ids[1]
    second = [rid for rid, _ in _item(at).responses]
    send_keys(at, ["1", "2", "Enter"], 1)
    two = [rid for rid, _ in _item(at).responses]
    assert _item(at).comparison_id == ids[2]
    send_keys(at, ["1", "T", "2", "X", "2", "Enter"], 1)  # two answers: the last press wins (B better)
    assert "Your queue is empty" in texts(at)
    rows = _judgments(ws.db)
    assert rows[0]["retracted"] and [r["ranking"] for r in rows[1:]] == [
        [[c], [b], [a]], [[second[0]], [second[1]], [second[2]]], [[two[1]], [two[0]]]]
    send_keys(at, ["U"], 1, lease=NO_ITEM)  # the empty page still takes U
    assert _item(at).comparison_id == ids[2] and _judgments(ws.db)[-1]["retracted"]
