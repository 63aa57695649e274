"""Simulated reviewers: exact rankings without noise, noise lowers agreement, the queue's rules hold, the judgments
are ordinary rows the pairs export reads, and bad oracles fail cleanly."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.conftest import table_hash
from tests.preferences import Seed

# words: 3, 12, 30, 80 -> length-in-range (10..30 words) scores -0.7, 0, 0, -5.0
TEXTS = {"a": "too short here", "b": " ".join(["fine"] * 12), "c": " ".join(["good"] * 30),
         "d": " ".join(["long"] * 80)}


def seed_queue(db, n: int = 6, required: int = 1, round: int = 0):
    seed = Seed()
    for i in range(n):
        seed.comparison(f"c{i}", f"Question {i}?", TEXTS, round=round)
    ids = seed.write(db)
    if required > 1:
        from store.queue import set_required_reviewers

        set_required_reviewers(db, required, "test")
    return ids


@pytest.mark.both_backends
def test_noise_zero_gives_the_oracle_ranking_through_the_queue(workspace):
    from rankloop.simulate import SimulationConfig, simulate_reviewers
    from store.agreement import agreement_report
    from store.db import read

    ids = seed_queue(workspace.db, n=4, required=2)
    result = simulate_reviewers(workspace, SimulationConfig("length-in-range", reviewers=3))
    assert result.judgments == 8 and result.comparisons_left == 0
    rows = read(workspace.db, lambda con: con.execute(
        "SELECT j.comparison_id, r.name, r.kind, j.ranking, j.source FROM judgments j "
        "JOIN reviewers r ON r.id = j.reviewer_id ORDER BY j.id").fetchall())
    per_comparison: dict[int, list[str]] = {}
    for cid, name, kind, ranking, source in rows:
        assert kind == "simulated" and source == "simulated" and name.startswith("sim-")
        per_comparison.setdefault(cid, []).append(name)
        k = f"c{[i for i in range(4) if ids(f'c{i}/a') in json.loads(ranking)[-2]][0]}"
        # b and c (in range) tie first, then a (3 words), then d (80 words)
        assert json.loads(ranking) == [sorted([ids(f"{k}/b"), ids(f"{k}/c")]), [ids(f"{k}/a")], [ids(f"{k}/d")]]
    assert all(len(names) == 2 == len(set(names)) for names in per_comparison.values())  # required, never twice
    assert agreement_report(workspace.db)["pairwise_agreement"] == 1.0
    again = simulate_reviewers(workspace, SimulationConfig("length-in-range", reviewers=3))
    assert again.judgments == 0  # nothing pending: a rerun adds nothing


@pytest.mark.both_backends
def test_max_judgments_stops_early_and_gives_the_held_items_back(workspace):
    from rankloop.simulate import SimulationConfig, simulate_reviewers
    from store.db import read

    seed_queue(workspace.db, n=4)
    result = simulate_reviewers(workspace, SimulationConfig("length-in-range", reviewers=2, max_judgments=3))
    assert result.judgments == 3 and result.comparisons_left == 1
    open_leases = read(workspace.db, lambda con: con.execute(
        "SELECT count(*) FROM leases WHERE closed_at IS NULL").fetchone()[0])
    assert open_leases == 0
    assert simulate_reviewers(workspace, SimulationConfig("length-in-range", reviewers=2)).judgments == 1


@pytest.mark.both_backends
def test_noise_lowers_agreement_and_spread_is_per_reviewer(workspace):
    from rankloop.simulate import SimulationConfig, simulate_reviewers
    from store.agreement import agreement_report

    seed_queue(workspace.db, n=12, required=3)
    config = SimulationConfig("length-in-range", reviewers=3, noise=1.0, spread=0.5, seed=7)
    assert [config.reviewer_noise(i) for i in range(3)] == [0.5, 1.0, 1.5]
    simulate_reviewers(workspace, config)
    report = agreement_report(workspace.db)
    assert report["comparisons"] == 12 and report["pairwise_agreement"] < 0.9
    flip = SimulationConfig("length-in-range", noise=0.5, noise_model="flip")
    assert flip.reviewer_noise(0) == 0.5


@pytest.mark.both_backends
def test_round_filter_and_the_pairs_export_reads_simulated_judgments(workspace):
    from rankloop.simulate import SimulationConfig, simulate_reviewers
    from store.pairs import preference_pairs
    from store.simulated import round_progress

    seed_queue(workspace.db, n=2, round=0)
    seed = Seed()
    seed.comparison("later", "Another question?", TEXTS, round=1)
    seed.write(workspace.db)
    simulate_reviewers(workspace, SimulationConfig("length-in-range", reviewers=1, round=1))
    assert round_progress(workspace.db, 0)["complete"] == 0 and round_progress(workspace.db, 1)["complete"] == 1
    pairs = preference_pairs(workspace.db)
    assert len(pairs) == 5  # 4 responses in 3 groups: 2*1 + 2*1 + 1*1 pairs (the tie gives none)
    assert set(pairs["chosen"]) <= {TEXTS["b"], TEXTS["c"], TEXTS["a"]} and TEXTS["d"] in set(pairs["rejected"])


@pytest.mark.both_backends
def test_pairs_file_and_python_function_oracles(workspace, tmp_path):
    from rankloop.oracles import resolve_oracle

    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "chosen": "yes", "rejected": "no"}) + "\n"
                    + json.dumps({"prompt": [{"role": "user", "content": "Q?"}], "chosen": "yes",
                                  "rejected": "maybe"}) + "\n")
    oracle = resolve_oracle(str(path))
    assert oracle.score(["Q?", "Q?", "Q?", "Q?"], ["yes", "no", "maybe", "other"]) == [2.0, -1.0, -1.0, 0.0]
    assert oracle.unknown == 1
    fn = resolve_oracle("rankloop.oracles:has_a_numbered_list")
    assert fn.score(["x", "x"], ["1. a\n2. b\n3. c", "no list"]) == [3.0, 0.0]
    assert resolve_oracle("avoids-words").score(["x"], ["Sorry, I cannot."]) == [-2.0]


@pytest.mark.parametrize("oracle, message", [
    ("nonsense", "oracle 'nonsense': unknown"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("rankloop.oracles:no_such_fn", "module 'rankloop.oracles' has no attribute 'no_such_fn'"),
    ("model:missing", "no model named 'missing'"),
    ("BAD_PAIRS", "bad.jsonl:2: field 'rejected': missing"),
    ("BROKEN_JSON", "broken.jsonl:1"),
])
def test_bad_oracles_fail_naming_what_and_where_and_write_nothing(workspace, tmp_path, oracle, message):
    from rankloop.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": "Q", "chosen": "a"}) + "\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    oracle = {"BAD_PAIRS": str(bad), "BROKEN_JSON": f"pairs:{broken}"}.get(oracle, oracle)
    seed_queue(workspace.db, n=2)
    before = table_hash(workspace.db)
    out = CliRunner().invoke(main, ["simulate", "-w", str(workspace.root), "--oracle", oracle])
    assert out.exit_code == 1, out.output
    assert message in out.output and "Traceback" not in out.output
    assert table_hash(workspace.db) == before


@pytest.mark.parametrize("backend", ["postgresql"])  # the one bad oracle found by a database read
def test_a_missing_model_oracle_writes_nothing_on_postgresql(workspace, tmp_path, backend):
    test_bad_oracles_fail_naming_what_and_where_and_write_nothing(workspace, tmp_path, "model:missing",
                                                                   "no model named 'missing'")


@pytest.mark.both_backends
def test_cli_simulate_and_bad_arguments(workspace):
    from rankloop.cli import main

    seed_queue(workspace.db, n=3, required=2)
    w = ["-w", str(workspace.root)]
    out = CliRunner().invoke(main, ["simulate", *w, "--oracle", "length-in-range", "--noise", "0.2"])
    assert out.exit_code == 0, out.output
    assert "6 judgments by sim-1, sim-2, sim-3" in out.output and "0 comparisons still incomplete" in out.output
    before = table_hash(workspace.db)
    out = CliRunner().invoke(main, ["simulate", *w, "--oracle", "length-in-range", "--noise", "-1"])
    assert out.exit_code == 1 and "noise: must be >= 0" in out.output
    out = CliRunner().invoke(main, ["simulate", *w, "--oracle", "length-in-range", "--reviewers", "0"])
    assert out.exit_code == 1 and "reviewers: must be between 1 and 50" in out.output
    assert table_hash(workspace.db) == before


@pytest.mark.both_backends
def test_a_reward_model_oracle_ranks_by_its_scores(workspace, tiny_lm, tmp_path):
    from rankloop.oracles import resolve_oracle
    from rankloop.simulate import SimulationConfig, simulate_reviewers
    from tests.policy_helpers import register_reward, tiny_reward_model

    register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm), "rm")
    seed_queue(workspace.db, n=2)
    oracle = resolve_oracle("model:rm", workspace.db)
    scores = oracle.score(["Q?"] * 4, list(TEXTS.values()))
    result = simulate_reviewers(workspace, SimulationConfig("model:rm", reviewers=1), oracle=oracle)
    assert result.judgments == 2 and len(set(scores)) == 4
    from store.simulated import round_judgments, round_responses

    responses = round_responses(workspace.db, 0)
    judgments = round_judgments(workspace.db, 0)
    assert sorted(j["comparison_id"] for j in judgments) == sorted({r["comparison_id"] for r in responses})
    for judgment in judgments:
        shown = [r for r in responses if r["comparison_id"] == judgment["comparison_id"]]
        score = dict(zip([r["response_id"] for r in shown],
                         oracle.score([r["messages"] for r in shown], [r["text"] for r in shown]), strict=True))
        ranking = judgment["ranking"]
        assert all(len(group) == 1 for group in ranking)  # four distinct scores: a strict order
        order = [rid for group in ranking for rid in group]
        assert sorted(order) == sorted(score)  # every response shown is ranked, once
        ordered = [score[rid] for rid in order]
        assert all(a >= b - 1e-5 for a, b in zip(ordered, ordered[1:], strict=False)), (order, score)  # best first
        assert ordered[0] > ordered[-1]
