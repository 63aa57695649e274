"""Importing ranked pairs: each format from real or export-shaped fixtures, read back from the database."""

import gzip
import json

import pandas as pd
import pytest

from store.db import read
from store.formats import FORMATS, detect_format
from store.imports import import_pairs, import_prompts
from tests.conftest import FIXTURES

pytestmark = pytest.mark.both_backends

OASST = FIXTURES / "oasst_message_trees_first15.jsonl"
LABELSTUDIO = FIXTURES / "labelstudio_pairwise_export.SYNTHETIC.json"
ARGILLA = FIXTURES / "argilla_v2_records_ranking.SYNTHETIC.jsonl"
ARENA = FIXTURES / "fastchat_arena_battles.SYNTHETIC.jsonl"
HH = FIXTURES / "hh_harmless_sample.jsonl.gz"


def q(db, sql, params=()):
    return read(db, lambda con: con.execute(sql, list(params)).fetchall())


def counts(db):
    return {t: q(db, f"SELECT count(*) FROM {t}")[0][0] for t in ("prompts", "responses", "comparisons", "judgments")}


def judged(db, where="true", params=()):
    """One row per judgment: reviewer, prompt messages, response texts in ranking order (groups), flags."""
    rows = q(db, f"""
        SELECT r.name, p.messages, p.text, c.response_ids, j.ranking, j.all_bad, j.skipped, j.edited_text,
               c.external_id, j.time_spent_ms
        FROM judgments j JOIN comparisons c ON c.id = j.comparison_id JOIN prompts p ON p.id = c.prompt_id
        JOIN reviewers r ON r.id = j.reviewer_id WHERE {where} ORDER BY j.id""", params)
    texts = dict(q(db, "SELECT id, text FROM responses"))
    out = []
    for name, messages, text, rids, ranking, all_bad, skipped, edited, ext, ms in rows:
        groups = None if ranking is None else [[texts[i] for i in g] for g in json.loads(ranking)]
        out.append({"reviewer": name, "messages": json.loads(messages), "text": text,
                    "responses": [texts[i] for i in rids], "ranking": groups, "all_bad": all_bad,
                    "skipped": skipped, "edited_text": edited, "external_id": ext, "time_spent_ms": ms})
    return out


@pytest.mark.parametrize("path,fmt", [(OASST, "oasst"), (LABELSTUDIO, "labelstudio"), (ARGILLA, "argilla"),
                                      (ARENA, "arena"), (HH, "hh")])
def test_formats_are_detected(path, fmt):
    assert detect_format(path) == fmt
    assert fmt in FORMATS


def test_oasst_trees_become_ranked_comparisons(workspace):
    result = import_pairs(workspace.db, OASST)
    assert result["format"] == "oasst"
    # 27 prompter messages with >= 2 ranked assistant replies, holding the fixture's 78 ranked messages.
    assert counts(workspace.db) == {"prompts": 27, "responses": 78, "comparisons": 27, "judgments": 27}
    assert q(workspace.db, "SELECT name, kind FROM reviewers") == [("oasst", "import")]
    first = json.loads(OASST.read_text(encoding="utf-8").splitlines()[0])["prompt"]
    j = judged(workspace.db, "c.external_id = ?", [first["message_id"]])[0]
    assert j["messages"] == [{"role": "user", "content": first["text"]}] and j["text"] is None
    by_rank = sorted(first["replies"], key=lambda r: r["rank"])
    assert j["ranking"] == [[r["text"]] for r in by_rank]
    assert q(workspace.db, "SELECT DISTINCT model_name FROM responses WHERE text = ?", [by_rank[0]["text"]]) == [
        ("chip20b",)]
    # Deeper comparisons carry the conversation that led to them: user, assistant, user.
    depths = {len(json.loads(m)) for (m,) in q(workspace.db, "SELECT messages FROM prompts")}
    assert depths == {1, 3}


def _tree(replies):
    return {"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": {
        "message_id": "m0", "role": "prompter", "text": "Name a colour.", "replies": replies}}


def _reply(mid, text, rank=None, deleted=False):
    return {"message_id": mid, "parent_id": "m0", "role": "assistant", "text": text, "rank": rank,
            "deleted": deleted, "replies": []}


def test_oasst_ties_unranked_and_deleted_replies(workspace, tmp_path):
    tree = _tree([_reply("a", "Red.", 1), _reply("b", "Blue.", 0), _reply("c", "Green.", 1),
                  _reply("d", "Unranked."), _reply("e", "Deleted.", 0, deleted=True)])
    f = tmp_path / "tree.jsonl"
    f.write_text(json.dumps(tree) + "\n", encoding="utf-8")
    import_pairs(workspace.db, f, fmt="oasst")
    (j,) = judged(workspace.db)
    assert j["responses"] == ["Red.", "Blue.", "Green."]  # without the unranked and the deleted reply
    assert j["ranking"] == [["Blue."], ["Red.", "Green."]]  # equal ranks tie


def test_oasst_flat_message_rows(workspace, tmp_path):
    """The oasst1 dataset shape: one message per row, linked by parent_id."""
    rows = [{"message_id": "m0", "parent_id": None, "role": "prompter", "text": "Name a colour."},
            {"message_id": "a", "parent_id": "m0", "role": "assistant", "text": "Red.", "rank": 1.0},
            {"message_id": "b", "parent_id": "m0", "role": "assistant", "text": "Blue.", "rank": 0.0},
            {"message_id": "u", "parent_id": "b", "role": "prompter", "text": "Another?"}]
    f = tmp_path / "oasst_flat.parquet"
    pd.DataFrame(rows).to_parquet(f)
    assert detect_format(f) == "oasst"
    import_pairs(workspace.db, f)
    (j,) = judged(workspace.db)
    assert j["ranking"] == [["Blue."], ["Red."]] and j["external_id"] == "m0"


def test_labelstudio_disagreement_and_cancelled(workspace):
    result = import_pairs(workspace.db, LABELSTUDIO)
    assert counts(workspace.db) == {"prompts": 5, "responses": 10, "comparisons": 5, "judgments": 6}
    assert result["reviewers_added"] == 2
    disagree = judged(workspace.db, "c.external_id = '103'")
    assert [(j["reviewer"], j["ranking"]) for j in disagree] == [
        ("labelstudio:2", [["A cat sat on a mat."], ["The mat was red."]]),
        ("labelstudio:3", [["The mat was red."], ["A cat sat on a mat."]]),
    ]
    (cancelled,) = judged(workspace.db, "c.external_id = '104'")
    assert cancelled["skipped"] and cancelled["ranking"] is None and cancelled["reviewer"] == "labelstudio:3"
    (right,) = judged(workspace.db, "c.external_id = '102'")
    assert right["ranking"] == [["7"], ["9"]] and right["text"] == "Name a prime number."
    assert right["time_spent_ms"] == 1100
    # Untrusted model output is stored verbatim; escaping is the app's job.
    (xss,) = judged(workspace.db, "c.external_id = '105'")
    assert xss["responses"][0] == "<script>alert('x')</script>Hi!"


def test_argilla_submitted_rankings_corrections_and_drafts(workspace):
    result = import_pairs(workspace.db, ARGILLA)
    assert counts(workspace.db) == {"prompts": 2, "responses": 6, "comparisons": 2, "judgments": 2}
    assert result["skipped"] == {"draft responses (not submitted)": 1}
    user1, user2 = "argilla:3f1c2a8e-0000-4000-8000-000000000001", "argilla:3f1c2a8e-0000-4000-8000-000000000002"
    j1, j2 = judged(workspace.db)
    rec = json.loads(ARGILLA.read_text(encoding="utf-8").splitlines()[0])
    assert (j1["reviewer"], j2["reviewer"]) == (user1, user2)
    assert j1["ranking"] == [[rec["response-1"]], [rec["response-3"]], [rec["response-2"]]]
    assert j2["ranking"] == [[rec["response-1"]], [rec["response-2"]], [rec["response-3"]]]
    assert j1["edited_text"] == rec["correction.responses"][0] and j2["edited_text"] is None
    # rec-2 has only a draft: a comparison waiting for reviewers, with no judgment.
    assert q(workspace.db, "SELECT count(*) FROM comparisons c WHERE external_id = 'rec-2' AND NOT EXISTS "
                           "(SELECT 1 FROM judgments j WHERE j.comparison_id = c.id)") == [(1,)]


def test_arena_winners_ties_and_both_bad(workspace):
    import_pairs(workspace.db, ARENA)
    assert counts(workspace.db) == {"prompts": 4, "responses": 8, "comparisons": 4, "judgments": 4}
    a_wins, tie, bothbad, b_wins = judged(workspace.db)
    assert a_wins["ranking"] == [["Paris."], ["Lyon."]] and a_wins["reviewer"] == "arena:arena_user_AbC123"
    assert a_wins["messages"] == [{"role": "user", "content": "Capital of France?"}]  # num_tokens dropped
    assert tie["ranking"] == [["Hi!", "Hello!"]] and not tie["all_bad"]
    assert bothbad["ranking"] == [["8", "16"]] and bothbad["all_bad"]
    assert b_wins["ranking"] == [["Jupiter."], ["Saturn."]]
    assert q(workspace.db, "SELECT model_name FROM responses WHERE text IN ('Saturn.', 'Jupiter.') ORDER BY id") == [
        ("policy-v1",), ("policy-v3",)]


def test_hh_prompt_text_kept_byte_for_byte(workspace):
    import_pairs(workspace.db, HH)
    assert counts(workspace.db) == {"prompts": 200, "responses": 400, "comparisons": 200, "judgments": 200}
    rows = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
    stored = {(j["text"], j["responses"][0], j["responses"][1]): j for j in judged(workspace.db)}
    for r in rows:
        j = stored[(r["prompt"], r["chosen"], r["rejected"])]  # text + chosen reproduces the original pair
        assert j["ranking"] == [[r["chosen"]], [r["rejected"]]]
        assert j["reviewer"] == "hh-rlhf/harmless-base-test"  # the rows' own source
    first = judged(workspace.db)[0]
    assert first["messages"][0] == {"role": "user", "content": "How much alcohol can I drink per day?"}
    assert [m["role"] for m in first["messages"]][:2] == ["user", "assistant"]
    # A real whitespace-only chosen (line 72) is kept verbatim: one space.
    assert q(workspace.db, "SELECT text FROM responses WHERE trim(text) = ''") == [(" ",)]


def test_hh_raw_dialogues_split_at_the_last_assistant_turn(workspace, tmp_path):
    rows = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")][:20]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]})
                           + "\n" for r in rows), encoding="utf-8")
    assert detect_format(raw) == "hh"
    result = import_pairs(workspace.db, raw, source="hh-raw")
    assert result["comparisons"] == 20
    assert {j["text"] for j in judged(workspace.db)} == {r["prompt"] for r in rows}
    # The normalized file then reuses those prompts, and its judgments (other reviewer) are new.
    assert import_pairs(workspace.db, HH)["prompts_reused"] == 20


def test_trl_standard_conversational_and_implicit_rows(workspace, tmp_path):
    user = [{"role": "user", "content": "What color is the sky?"}]
    rows = [
        {"prompt": "2+2?", "chosen": " 4", "rejected": " 5", "margin": 1.5, "reviewer": "alice"},
        {"prompt": user, "chosen": [{"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "assistant", "content": "Green."}]},
        {"chosen": "Q: capital of Italy? A: Rome", "rejected": "Q: capital of Italy? A: Milan"},
        {"chosen": [*user, {"role": "assistant", "content": "It is blue."}],
         "rejected": [*user, {"role": "assistant", "content": "It is red."}]},
    ]
    f = tmp_path / "trl.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert detect_format(f) == "trl"
    result = import_pairs(workspace.db, f, source="my-prefs")
    assert result["comparisons"] == 4 and result["prompts_added"] == 3  # rows 2 and 4 share a prompt
    standard, conv, implicit, implicit_conv = judged(workspace.db)
    assert standard["reviewer"] == "alice" and standard["text"] == "2+2?"
    assert standard["ranking"] == [[" 4"], [" 5"]]
    assert conv["reviewer"] == "my-prefs" and conv["messages"] == user and conv["text"] is None
    assert implicit["text"] == "Q: capital of Italy? A:" and implicit["ranking"] == [[" Rome"], [" Milan"]]
    assert implicit_conv["messages"] == user and implicit_conv["ranking"] == [["It is blue."], ["It is red."]]


def test_trl_rows_of_the_same_pair_share_a_comparison(workspace, tmp_path):
    rows = [{"prompt": "Pick one.", "chosen": "A", "rejected": "B", "reviewer": "alice"},
            {"prompt": "Pick one.", "chosen": "B", "rejected": "A", "reviewer": "bob"},
            {"prompt": "Pick one.", "chosen": "A", "rejected": "C", "reviewer": "alice"}]
    f = tmp_path / "trl.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = import_pairs(workspace.db, f)
    assert (result["comparisons"], result["responses"], result["judgments"]) == (2, 4, 3)
    alice, bob, _ = judged(workspace.db)
    assert alice["responses"] == bob["responses"] == ["A", "B"]  # one comparison, two reviewers who disagree
    assert (alice["ranking"], bob["ranking"]) == ([["A"], ["B"]], [["B"], ["A"]])


def test_trl_parquet_and_prompts_shared_with_a_prompts_import(workspace, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hi.\nSay bye.\n", encoding="utf-8")
    import_prompts(workspace.db, prompts)
    f = tmp_path / "pairs.parquet"
    pd.DataFrame({"prompt": ["Say hi.", "Say bye."], "chosen": ["Hi!", "Bye!"], "rejected": ["Go.", "Stay."]}
                 ).to_parquet(f)
    result = import_pairs(workspace.db, f)
    assert result["format"] == "trl" and result["prompts_reused"] == 2 and result["prompts_added"] == 0
    assert counts(workspace.db) == {"prompts": 2, "responses": 4, "comparisons": 2, "judgments": 2}


def test_imported_judgments_count_like_the_apps(workspace):
    """Exports read judgments through store.feedback: imported ones must look like ranked-in-the-app ones."""
    from store.feedback import read_feedback

    import_pairs(workspace.db, ARENA)
    fb = read_feedback(workspace.db)
    uses = sorted(j.use for j in fb.judgments)
    assert uses == ["all_bad", "ranking", "ranking", "ranking"]
