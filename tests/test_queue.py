"""The queue: N distinct reviewers per comparison, leases, order, skip, undo, gold, idempotent submit."""

import json
import threading

import pytest

from store.agreement import gold_accuracy, set_gold
from store.batch import Batch, Comparison, Prompt, Response, write_batch
from store.db import read, transaction
from store.queue import (
    AlreadyJudged,
    Answer,
    display_order,
    next_item,
    progress,
    set_priority,
    set_required_reviewers,
    submit,
    submit_and_next,
    undo,
)
from store.settings import set_setting
from store.status import workspace_status
from store.users import add_user

pytestmark = pytest.mark.both_backends


def seed_comparisons(db, n: int, k: int = 3, round: int = 0, texts=None, required: int = 1) -> list[int]:
    """n comparisons of k responses each (prompt i, responses 'answer i.j'); returns their ids in creation order."""
    batch = Batch()
    for i in range(n):
        batch.prompts.append(Prompt(key=i, messages=[{"role": "user", "content": f"question {round}.{i}"}]))
        for j in range(k):
            text = texts[j] if texts else f"answer {i}.{j}"
            batch.responses.append(Response(key=(i, j), prompt_key=i, text=text, model_name=f"model-{j}"))
        batch.comparisons.append(Comparison(key=i, prompt_key=i, response_keys=[(i, j) for j in range(k)],
                                            round=round, required_reviewers=required))
    with transaction(db) as con:
        return write_batch(con, batch).comparison_ids


def reviewers(db, *names):
    return {n: add_user(db, n, "reviewer", "password " + n, actor="test") for n in names}


def rank_as_shown(item):
    return Answer(ranking=[[rid] for rid, _ in item.responses], time_spent_ms=1234)


def _rows(db, sql, params=()):
    return read(db, lambda con: con.execute(sql, list(params)).fetchall())


def test_display_order_is_shuffled_per_reviewer_and_stable():
    ids = list(range(10, 18))
    assert display_order(1, 5, ids) == display_order(1, 5, ids)
    assert sorted(display_order(1, 5, ids)) == ids
    assert len({tuple(display_order(r, 5, ids)) for r in range(1, 6)}) > 1


def test_submit_stores_the_judgment_with_display_order_and_time(workspace):
    seed_comparisons(workspace.db, 2)
    ids = reviewers(workspace.db, "ana")
    item = next_item(workspace.db, ids["ana"])
    assert next_item(workspace.db, ids["ana"]).lease_id == item.lease_id  # a rerun resumes the same lease
    jid = submit(workspace.db, item.lease_id, ids["ana"], "ana", rank_as_shown(item))
    again = submit(workspace.db, item.lease_id, ids["ana"], "ana", rank_as_shown(item))  # a retried submit
    assert again == jid
    rows = _rows(workspace.db, "SELECT comparison_id, ranking, display_order, time_spent_ms, idempotency_key, source "
                 "FROM judgments")
    assert len(rows) == 1
    cid, ranking, shown, ms, key, source = rows[0]
    assert cid == item.comparison_id and shown == [r for r, _ in item.responses] and ms == 1234
    assert json.loads(ranking) == [[r] for r, _ in item.responses]
    assert key == f"app:{ids['ana']}:{cid}:{item.lease_id}" and source == "app"
    assert _rows(workspace.db, "SELECT outcome, judgment_id FROM leases")[0] == ("submitted", jid)


def test_n_distinct_reviewers_and_leases_do_not_overfill(workspace):
    (cid,) = seed_comparisons(workspace.db, 1, required=2)
    ids = reviewers(workspace.db, "ana", "bo", "cy")
    a, b = next_item(workspace.db, ids["ana"]), next_item(workspace.db, ids["bo"])
    assert a.comparison_id == b.comparison_id == cid
    assert next_item(workspace.db, ids["cy"]) is None  # two slots, both leased
    _, after = submit_and_next(workspace.db, a.lease_id, ids["ana"], "ana", rank_as_shown(a))
    assert after is None  # nobody gets the same comparison twice
    submit(workspace.db, b.lease_id, ids["bo"], "bo", rank_as_shown(b))
    assert next_item(workspace.db, ids["cy"]) is None
    assert workspace_status(workspace.db)["comparisons_complete"] == 1


def test_expired_lease_and_skip_give_the_slot_back(workspace):
    (cid,) = seed_comparisons(workspace.db, 1)
    ids = reviewers(workspace.db, "ana", "bo", "cy")
    a = next_item(workspace.db, ids["ana"])
    assert next_item(workspace.db, ids["bo"]) is None
    with transaction(workspace.db) as con:
        con.execute("UPDATE leases SET expires_at = expires_at - INTERVAL '1 day'")
    b = next_item(workspace.db, ids["bo"])
    assert b.comparison_id == cid
    assert _rows(workspace.db, "SELECT outcome FROM leases WHERE id = ?", [a.lease_id]) == [("expired",)]
    submit(workspace.db, b.lease_id, ids["bo"], "bo", Answer(), skipped=True)
    c = next_item(workspace.db, ids["cy"])
    assert c.comparison_id == cid
    assert next_item(workspace.db, ids["bo"]) is None  # the skipper is not offered it again
    # A late submit on an expired lease is still stored: acknowledged work is never thrown away.
    submit(workspace.db, a.lease_id, ids["ana"], "ana", rank_as_shown(a))
    assert _rows(workspace.db, "SELECT count(*) FROM judgments WHERE NOT skipped") == [(1,)]


def test_order_is_priority_then_round_then_age(workspace):
    late = seed_comparisons(workspace.db, 2, round=1)
    early = seed_comparisons(workspace.db, 3, round=0)
    set_priority(workspace.db, 5.0, actor="admin", comparison_ids=[early[2]])
    ids = reviewers(workspace.db, "ana")
    seen = []
    item = next_item(workspace.db, ids["ana"])
    while item:
        seen.append(item.comparison_id)
        _, item = submit_and_next(workspace.db, item.lease_id, ids["ana"], "ana", rank_as_shown(item))
    assert seen == [early[2], early[0], early[1], late[0], late[1]]
    assert progress(workspace.db, ids["ana"]) == {"done_today": 5, "total": 5, "remaining": 0}


def test_priority_counts_across_rounds_and_age_earns_priority(workspace):
    """Priority less 0.5 per round number: a later round's uncertain comparison is served before an earlier round's
    confident one, a comparison two rounds older before any scored one; the cached order and the plain query (the
    first regular item it names) agree at every step."""
    from store import queue as q
    from store.db import write

    old = seed_comparisons(workspace.db, 2, round=0)  # never scored: priority 0
    mid = seed_comparisons(workspace.db, 2, round=1)
    new = seed_comparisons(workspace.db, 2, round=2)
    set_priority(workspace.db, 0.9, actor="score", comparison_ids=[mid[1]])   # 0.9 - 0.5 = 0.4
    set_priority(workspace.db, 0.1, actor="score", comparison_ids=[mid[0]])   # 0.1 - 0.5 = -0.4
    set_priority(workspace.db, 1.0, actor="score", comparison_ids=[new[0]])   # 1.0 - 1.0 = 0: ties old, older first
    ids = reviewers(workspace.db, "ana")
    seen = []
    item = next_item(workspace.db, ids["ana"])
    while item:
        seen.append(item.comparison_id)
        plain = read(workspace.db, lambda con: q._queue_query(con, ids["ana"], None))
        cached = write(workspace.db, lambda con: q._queue_state(con, ids["ana"], None), keeps_queue_cache=True)
        assert plain == cached
        _, item = submit_and_next(workspace.db, item.lease_id, ids["ana"], "ana", rank_as_shown(item))
    assert seen == [mid[1], old[0], old[1], new[0], mid[0], new[1]]


def test_undo_retracts_and_hands_the_item_back(workspace):
    first, second = seed_comparisons(workspace.db, 2)
    ids = reviewers(workspace.db, "ana")
    item = next_item(workspace.db, ids["ana"])
    jid, nxt = submit_and_next(workspace.db, item.lease_id, ids["ana"], "ana", rank_as_shown(item))
    back = undo(workspace.db, jid, ids["ana"], "ana", release_lease_id=nxt.lease_id)
    assert back.comparison_id == first and back.lease_id not in (item.lease_id, nxt.lease_id)
    assert _rows(workspace.db, "SELECT retracted_by FROM judgments WHERE id = ?", [jid]) == [("ana",)]
    assert _rows(workspace.db, "SELECT outcome FROM leases WHERE id = ?", [nxt.lease_id]) == [("released",)]
    with pytest.raises(ValueError, match="already undone"):
        undo(workspace.db, jid, ids["ana"], "ana")
    with pytest.raises(ValueError, match="given back"):
        submit(workspace.db, nxt.lease_id, ids["ana"], "ana", rank_as_shown(nxt))
    jid2 = submit(workspace.db, back.lease_id, ids["ana"], "ana", rank_as_shown(back))
    assert jid2 != jid and workspace_status(workspace.db)["judgments"] == 1
    set_setting(workspace.db, "undo_window_s", 0, actor="admin")
    with pytest.raises(ValueError, match="too late"):
        undo(workspace.db, jid2, ids["ana"], "ana")
    assert _rows(workspace.db, "SELECT count(*) FROM audit_log WHERE action = 'judgment.undo'") == [(1,)]


def test_a_second_lease_on_a_judged_comparison_cannot_store_twice(workspace):
    (cid,) = seed_comparisons(workspace.db, 1)
    ids = reviewers(workspace.db, "ana")
    item = next_item(workspace.db, ids["ana"])
    submit(workspace.db, item.lease_id, ids["ana"], "ana", rank_as_shown(item))
    with transaction(workspace.db) as con:
        con.execute("INSERT INTO leases (id, comparison_id, reviewer_id, expires_at) VALUES "
                    "(nextval('leases_id'), ?, ?, localtimestamp + INTERVAL '1 hour')", [cid, ids["ana"]])
        (other,) = con.execute("SELECT max(id) FROM leases").fetchone()
    with pytest.raises(AlreadyJudged):
        submit(workspace.db, other, ids["ana"], "ana", rank_as_shown(item))


def test_gold_items_mix_in_at_the_rate_and_score_accuracy(workspace):
    regular = seed_comparisons(workspace.db, 6)
    (gold_id,) = seed_comparisons(workspace.db, 1, round=0, texts=["good", "bad", "worse"])
    (resp,) = _rows(workspace.db, "SELECT response_ids FROM comparisons WHERE id = ?", [gold_id])
    set_gold(workspace.db, gold_id, actor="admin", ranking=[[r] for r in resp[0]])
    set_setting(workspace.db, "gold_rate", 0.25, actor="admin")
    ids = reviewers(workspace.db, "ana")
    seen, item = [], next_item(workspace.db, ids["ana"])
    while item:
        seen.append((item.comparison_id, item.is_gold))
        answer = Answer(ranking=[[r] for r in sorted(rid for rid, _ in item.responses)])
        _, item = submit_and_next(workspace.db, item.lease_id, ids["ana"], "ana", answer)
    assert seen[3] == (gold_id, True)  # floor(0.25 * 4) = 1 gold among the first four
    assert [c for c, _ in seen if c != gold_id] == regular
    assert gold_accuracy(workspace.db) == {"ana": {"gold_items": 1, "gold_accuracy": 1.0}}


def test_set_required_reviewers_for_a_round(workspace):
    seed_comparisons(workspace.db, 2, round=0)
    seed_comparisons(workspace.db, 3, round=1)
    assert set_required_reviewers(workspace.db, 3, actor="admin", round=1) == 3
    assert _rows(workspace.db, "SELECT round, min(required_reviewers) FROM comparisons GROUP BY 1 ORDER BY 1") == [
        (0, 1), (1, 3)]


def test_concurrent_reviewers_never_overfill(workspace):
    seed_comparisons(workspace.db, 6, required=2)
    names = [f"r{i}" for i in range(6)]
    ids = reviewers(workspace.db, *names)
    errors = []

    def work(name):
        try:
            item = next_item(workspace.db, ids[name])
            while item:
                _, item = submit_and_next(workspace.db, item.lease_id, ids[name], name, rank_as_shown(item))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    counts = _rows(workspace.db, "SELECT comparison_id, count(*) FROM judgments GROUP BY 1")
    assert len(counts) == 6 and all(n == 2 for _, n in counts)


def test_nobody_ranks_their_own_edited_answer(workspace):
    ids = reviewers(workspace.db, "ana", "bo")
    batch = Batch(prompts=[Prompt(key=0, messages=[{"role": "user", "content": "q"}])],
                  responses=[Response(key=0, prompt_key=0, text="model answer"),
                             Response(key=1, prompt_key=0, text="ana's edit", source="reviewer_edit",
                                      params={"edited_by_reviewer_id": ids["ana"]})],
                  comparisons=[Comparison(key=0, prompt_key=0, response_keys=[0, 1])])
    with transaction(workspace.db) as con:
        (cid,) = write_batch(con, batch).comparison_ids
    assert next_item(workspace.db, ids["ana"]) is None
    assert next_item(workspace.db, ids["bo"]).comparison_id == cid
