"""The reward model trained on whole rankings (loss "ranking", issue 17): the ranking rows (store/rankings.py, the
"rankings" snapshot), the probe's ranking fit and fine-tuning with the Davidson-Luce loss on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reward.probe import fit_probe, fit_ranking_probe
from store.pairs import PairFilter
from store.rankings import EDITED_ID, expand_pairs, preference_rankings
from tests.preferences import Seed
from tests.reward_data import register_tiny, seed_pairs, tiny_config
from training.snapshot import take_snapshot


def _filter(edited_first: bool | None = None) -> PairFilter:
    f = PairFilter()
    if edited_first is not None:  # PairFilter.edited_first (issue 17) may not be a field yet: set it either way
        f.edited_first = edited_first
    return f


@pytest.mark.both_backends
def test_a_ranking_with_a_tie_is_one_row_with_its_group_indices(workspace):
    seed = Seed().comparison("q", "Name a colour.", {"a": "red", "b": "blue", "c": "green"})
    seed.judge("q", "ana", "b>a=c")
    seed.judge("q", "bo", "a=b=c")  # all tied: no pair, but a ranking row (the tie says "about equal")
    seed.judge("q", "cy", skipped=True)
    seed.judge("q", "dee", "c>b>a", all_bad=True)  # "all bad" gives no ranking, as it gives no pair
    ids = seed.write(workspace.db)

    rows = preference_rankings(workspace.db)
    assert list(rows.reviewer) == ["ana", "bo"]
    ana, bo = rows.iloc[0], rows.iloc[1]
    assert list(ana.response_ids) == [ids("q/b"), ids("q/a"), ids("q/c")]
    assert list(ana.responses) == ["blue", "red", "green"] and list(ana.groups) == [0, 1, 1]
    assert list(bo.groups) == [0, 0, 0] and np.isnan(bo.agreement)
    assert not ana.edited and ana.prompt_text == "Name a colour."
    # ana's two pairs (b>a, b>c): one vote each, and bo's tie votes against both: agreement 1/2
    assert ana.agreement == pytest.approx(0.5)
    expanded = expand_pairs(rows)
    assert sorted(zip(expanded.chosen, expanded.rejected, strict=True)) == [("blue", "green"), ("blue", "red")]
    # min_agreement keeps rankings that agree enough; a ranking without pairs has no agreement
    assert preference_rankings(workspace.db, PairFilter(min_agreement=0.6)).empty
    assert list(preference_rankings(workspace.db, PairFilter(min_agreement=0.5)).reviewer) == ["ana"]


@pytest.mark.both_backends
def test_an_edited_answer_is_its_own_top_group_unless_turned_off(workspace):
    seed = Seed().comparison("q", "Name a colour.", {"a": "red", "b": "blue", "c": "green"})
    seed.judge("q", "ana", "a>b=c", edited_text="Red, like a ripe tomato.")
    seed.judge("q", "bo", "c>a>b", edited_text="   ")  # a blank edit is no answer
    seed.judge("q", "cy", all_bad=True, edited_text="Crimson.")  # "all bad" + an edit: the edit, then all tied
    seed.judge("q", "dee", all_bad=True)  # "all bad" without an edit: no row
    seed.judge("q", "eve", "b>a>c", edited_text="green")  # the edit is a candidate's text: no item of its own
    seed.write(workspace.db)

    ana, bo, cy, eve = (r for _, r in preference_rankings(workspace.db, _filter()).iterrows())
    assert list(cy.responses) == ["Crimson.", "red", "blue", "green"] and list(cy.groups) == [0, 1, 1, 1]
    assert not eve.edited and list(eve.responses) == ["blue", "red", "green"] and list(eve.groups) == [0, 1, 2]
    assert ana.edited and list(ana.response_ids)[0] == EDITED_ID
    assert list(ana.responses) == ["Red, like a ripe tomato.", "red", "blue", "green"]
    assert list(ana.groups) == [0, 1, 2, 2]
    assert not bo.edited and list(bo.groups) == [0, 1, 2]
    pairs = expand_pairs(preference_rankings(workspace.db, _filter()).head(1))
    edit_pairs = pairs[pairs.chosen_id == EDITED_ID]
    assert sorted(edit_pairs.rejected) == ["blue", "green", "red"]  # the edit outranks every candidate
    assert not (pairs.rejected_id == EDITED_ID).any()

    off = preference_rankings(workspace.db, _filter(edited_first=False))
    assert list(off.reviewer) == ["ana", "bo", "eve"] and not off.edited.any()
    assert list(off.iloc[0].groups) == [0, 1, 1]


def test_rankings_snapshot_splits_prompts_as_the_pairs_snapshot_and_holds_out_the_same_pairs(workspace):
    seed_pairs(workspace.db)
    config = tiny_config(loss="ranking")
    pairs, _ = take_snapshot(workspace.db, tiny_config())
    frame, record = take_snapshot(workspace.db, config, "rankings")
    train, held = frame[frame.part == "train"], frame[frame.part == "eval"]
    assert set(train.row) == {"ranking"} and set(held.row) == {"pair"}
    side = dict(zip(pairs.prompt_key, pairs.part, strict=False))
    assert all(side[k] == "train" for k in train.prompt_key)
    key = ["comparison_id", "judgment_id", "chosen_id", "rejected_id"]
    assert sorted(map(tuple, held[key].astype(int).values.tolist())) == \
        sorted(map(tuple, pairs[pairs.part == "eval"][key].values.tolist()))
    # one row per train judgment: alice's 24 rankings and bob's 8 on the train prompts, three items each
    n_train_prompts = train.prompt_key.nunique()
    assert len(train) == record["rankings"] == n_train_prompts + sum(
        1 for k in train.prompt_key.unique() if len(train[train.prompt_key == k]) == 2)
    assert {len(g) for g in train.groups} == {3} and record["kind"] == "rankings"
    # capped, the train rankings are the judgments behind the kept train pairs, in the pairs' (hashed) order
    capped, _ = take_snapshot(workspace.db, tiny_config(max_pairs=30), "pairs")
    ranked, _ = take_snapshot(workspace.db, tiny_config(loss="ranking", max_pairs=30), "rankings")
    behind = list(dict.fromkeys(capped[capped.part == "train"].judgment_id))
    assert list(ranked[ranked.part == "train"].judgment_id.astype(int)) == behind


def _synthetic(rng, n):
    """Items with a true score (feature 0) and a nuisance feature (1). Strict rankings: three items whose nuisance
    follows the score (it looks predictive); tied rankings: two items of equal score but very different nuisance."""
    features, items, groups = [], [], []
    for _ in range(n):
        s = np.sort(rng.normal(size=3))[::-1]
        rows = [[v, v + rng.normal(scale=0.1)] for v in s]
        items.append(list(range(len(features), len(features) + 3)))
        groups.append([0, 1, 2])
        features += rows
        s = rng.normal()
        items.append([len(features), len(features) + 1])
        groups.append([0, 0])
        features += [[s, s + 2.0], [s, s - 2.0]]
    return np.array(features), items, groups


def test_the_ranking_probe_learns_from_ties_what_pairs_drop():
    rng = np.random.default_rng(0)
    features, items, groups = _synthetic(rng, 30)
    ranking = fit_ranking_probe(features, items, groups, [0.01], 3, 0, 0, 64)
    chosen = [features[rows[a]] for rows, gs in zip(items, groups, strict=True) for a in range(len(rows))
              for b in range(len(rows)) if gs[a] < gs[b]]
    rejected = [features[rows[b]] for rows, gs in zip(items, groups, strict=True) for a in range(len(rows))
                for b in range(len(rows)) if gs[a] < gs[b]]
    pairwise = fit_probe(np.array(chosen), np.array(rejected), [0.01], 3, 0, 0, 64)
    # Held out: the better item has the lower nuisance, so only a reward that ignores it orders them right.
    s = rng.normal(size=200)
    better = np.stack([s + 1.0, s + 1.0 - 2.5], 1)  # score 1 higher, nuisance 1.5 lower
    worse = np.stack([s, s], 1)

    def accuracy(probe):
        return float(np.mean(np.array(probe.rewards(better)) > np.array(probe.rewards(worse))))

    assert accuracy(ranking) > 0.9, accuracy(ranking)
    assert accuracy(pairwise) < 0.6, accuracy(pairwise)


def test_on_untied_pairs_the_ranking_probe_is_the_pairwise_probe():
    rng = np.random.default_rng(1)
    chosen, rejected = rng.normal(size=(40, 5)) + 0.5, rng.normal(size=(40, 5))
    features = np.concatenate([chosen, rejected])
    items = [[i, 40 + i] for i in range(40)]
    ranking = fit_ranking_probe(features, items, [[0, 1]] * 40, [0.1, 1.0], 4, 0, 0, 64)
    pairwise = fit_probe(chosen, rejected, [0.1, 1.0], 4, 0, 0, 64)
    assert ranking.cv_accuracy == pairwise.cv_accuracy and ranking.penalty == pairwise.penalty
    assert np.allclose(ranking.w, pairwise.w, atol=1e-5) and np.allclose(ranking.mean, pairwise.mean)


@pytest.fixture
def ws(workspace, tiny_lm):
    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db)
    return workspace


@pytest.mark.usefixtures("one_thread")
def test_probe_with_the_ranking_loss_trains_and_is_measured_on_the_held_out_pairs(ws):
    from reward.evaluate import evaluate_reward_model
    from reward.train import train_reward_model
    from store.runs import get_run

    result = train_reward_model(ws, tiny_config(method="probe", loss="ranking", probe_penalties=[0.01, 1.0],
                                                probe_folds=3, reviewers=["alice"]), progress=False)
    m = result.metrics
    assert m["loss"] == "ranking" and m["eval_accuracy"] == 1.0 and m["eval_pairs"] > 0
    assert m["train_rankings"] > 0 and m["train_pairs"] == 3 * m["train_rankings"]
    run = get_run(ws.db, result.run_id)
    assert run.data_snapshot["kind"] == "rankings" and run.data_snapshot["rankings"] == m["train_rankings"]
    evaluation = evaluate_reward_model(ws, result.model_name)  # the run's held-out pairs, from its saved rows
    assert evaluation.metrics["accuracy"] == m["eval_accuracy"] and evaluation.metrics["pairs"] == m["eval_pairs"]


@pytest.mark.usefixtures("one_thread")
def test_fine_tuning_with_the_ranking_loss_lowers_it_and_moves_the_weights(ws):
    from reward.train import train_reward_model
    from tests.test_reward_train import Watch

    watch = Watch()
    result = train_reward_model(ws, tiny_config(method="full", loss="ranking", max_steps=8, eval_steps=8,
                                                per_device_train_batch_size=4), progress=False, callbacks=[watch])
    assert len(watch.losses) == 8
    assert sum(watch.losses[-3:]) / 3 < sum(watch.losses[:3]) / 3 - 0.01, watch.losses
    moved = [n for n in watch.trainable if not torch.equal(watch.before[n], watch.after[n])]
    assert len(moved) == len(watch.trainable), "some trainable weights did not move"
    m = result.metrics
    assert m["loss"] == "ranking" and "eval_accuracy" in m and m["train_rankings"] > 0


def test_the_ranking_loss_refuses_a_margin():
    from reward.config import RewardConfigError

    with pytest.raises(RewardConfigError, match="loss 'ranking' has no margin"):
        tiny_config(method="full", loss="ranking", margin=True)


@pytest.mark.usefixtures("one_thread")
def test_resume_with_the_other_loss_is_refused_naming_it(ws):
    from reward.train import train_reward_model
    from store.runs import list_runs

    first = train_reward_model(ws, tiny_config(method="probe", loss="ranking", probe_penalties=[1.0], probe_folds=2),
                               progress=False)
    with pytest.raises(ValueError, match=f"loss: run {first.run_id} trained on rankings; resume it with loss = "
                                         "ranking"):
        train_reward_model(ws, tiny_config(method="probe", probe_penalties=[1.0], probe_folds=2),
                           resume_from=first.run_id, progress=False)
    assert len(list_runs(ws.db, kind="reward")) == 1  # refused before a run row was opened
