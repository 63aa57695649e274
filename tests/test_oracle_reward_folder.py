"""The `reward:FOLDER` oracle (rankloop.oracles): a reward model from outside the workspace, e.g. scripts/loop_gold's
gold model, scores as RewardScorer does; bad folders fail naming the spec and the folder."""

from __future__ import annotations

import pytest


def test_a_reward_folder_oracle_scores_like_the_reward_model(tiny_lm, tmp_path):
    from rankloop.oracles import resolve_oracle
    from reward.score import RewardScorer
    from tests.policy_helpers import tiny_reward_model

    folder = tiny_reward_model(tmp_path / "gold", tiny_lm)
    oracle = resolve_oracle(f"reward:{folder}")
    prompts = [[{"role": "user", "content": "How do I bake bread?"}], "Q?", "Q?"]
    responses = ["Knead flour, water and yeast.", "No.", "A long answer about many things."]
    scores = oracle.score(prompts, responses)
    assert oracle.kind == "reward" and len(set(scores)) == 3
    assert scores == pytest.approx(RewardScorer(folder).score(prompts, responses))


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nowhere", "is not a folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "is not a rankloop reward model (no rankloop-reward.json)"),
    (lambda p: (p / "bad").mkdir() or (p / "bad" / "rankloop-reward.json").write_text("{}") and p / "bad",
     "has no 'method'"),
])
def test_bad_reward_folders_fail_naming_the_spec_and_folder(tmp_path, make, message):
    from rankloop.oracles import resolve_oracle

    folder = make(tmp_path)
    with pytest.raises(ValueError) as e:
        resolve_oracle(f"reward:{folder}")
    assert message in str(e.value) and f"reward:{folder}" in str(e.value)
    with pytest.raises(ValueError, match="name a reward-model folder"):
        resolve_oracle("reward:")
