"""`train_ppo` on a workspace: run row, policy row with lineage, checkpoints, and a resumed run that matches an
uninterrupted one step for step."""

from __future__ import annotations

import json
import math

import pytest

from rl.ppo_config import PPOTrainingConfig
from rl.ppo_run import train_ppo
from tests.policy_helpers import Interrupt, count_e
from tests.reward_data import register_tiny, seed_pairs

pytestmark = pytest.mark.usefixtures("one_thread")



def config(**kw) -> PPOTrainingConfig:
    values = dict(policy="tiny", max_steps=4, save_steps=2, rollout_batch_size=4, num_minibatches=2, ppo_epochs=1,
                  max_new_tokens=8, learning_rate=1e-3, report_to=["tensorboard"], splits=[])
    values.update(kw)
    return PPOTrainingConfig(**values)


def test_train_ppo_registers_a_policy_with_lineage(workspace, tiny_lm):
    from rl.ppo_run import train_ppo
    from store.models import get_model
    from store.runs import get_run

    seed_pairs(workspace.db, n=6)
    tiny_id = register_tiny(workspace.db, tiny_lm)
    result = train_ppo(workspace, config(name="ppo-v1"), reward_fn=count_e, progress=False)
    row = get_model(workspace.db, "ppo-v1")
    assert row.kind == "policy" and row.parent_id == tiny_id and row.run_id == result.run_id
    run = get_run(workspace.db, result.run_id)
    assert run.kind == "ppo" and run.status == "succeeded" and run.data_snapshot["prompts"] == 6
    shares = [run.metrics[k] for k in ("sampling_share", "scoring_share", "update_share")]
    assert run.metrics["global_step"] == 4 and all(0 < x < 1 for x in shares)
    assert sum(shares) == pytest.approx(1, abs=0.01)
    assert (result.model_dir / "config.json").is_file() and (result.run_dir / "checkpoint-4").is_dir()
    assert list((result.run_dir / "tensorboard").glob("events.*"))


def test_resume_continues_from_the_checkpoint_and_matches_an_uninterrupted_run(workspace, tiny_lm):
    from rl.ppo_run import resume_ppo_config, train_ppo
    from store.runs import get_run, list_runs

    seed_pairs(workspace.db, n=6)
    register_tiny(workspace.db, tiny_lm)
    whole = train_ppo(workspace, config(name="whole", report_to=[]), reward_fn=count_e, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_ppo(workspace, config(name="cut", report_to=[]), reward_fn=Interrupt(at=3), progress=False)
    cut = list_runs(workspace.db, kind="ppo")[-1]
    assert cut.status == "cancelled"
    run_id, cfg = resume_ppo_config(workspace, "latest")
    assert run_id == cut.id and cfg.name == "cut"
    resumed = train_ppo(workspace, cfg, reward_fn=count_e, resume_from=run_id, progress=False)
    assert resumed.metrics["global_step"] == 4
    assert get_run(workspace.db, resumed.run_id).metrics["resumed_at_step"] == 2
    def scores(result):
        return [json.loads(line)["score"] for line in (result.run_dir / "history.jsonl").read_text().splitlines()]

    assert scores(resumed) == pytest.approx(scores(whole))


def test_train_ppo_scores_with_the_workspace_reward_model(workspace, tiny_lm, tmp_path):
    from rl.ppo_run import train_ppo
    from store.models import get_model
    from store.runs import get_run
    from tests.policy_helpers import register_reward, tiny_reward_model

    seed_pairs(workspace.db, n=4)
    register_tiny(workspace.db, tiny_lm)
    rm_id = register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm))
    result = train_ppo(workspace, config(max_steps=2, name="ppo-rm", report_to=[]), progress=False)
    assert get_run(workspace.db, result.run_id).data_snapshot["reward_model_id"] == rm_id
    assert get_model(workspace.db, "ppo-rm").metrics["reward_model"] == "rm"
    first = result.metrics["first_score"]
    assert isinstance(first, float) and math.isfinite(first)  # a real reward-model score (not None, not NaN)
    history = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert history[0]["score"] == first and len(history) == 2


def test_train_ppo_without_a_reward_model_says_so(workspace, tiny_lm):
    from rl.ppo_run import train_ppo

    seed_pairs(workspace.db, n=2)
    register_tiny(workspace.db, tiny_lm)
    with pytest.raises(ValueError, match="no reward model"):
        train_ppo(workspace, config(), progress=False)


@pytest.mark.slow
def test_real_default_model_runs_a_few_steps_of_each_trainer(workspace, tmp_path):
    """SmolLM2-135M-Instruct (the default policy): DPO, SFT and PPO for two steps each on HH pairs, LoRA, CPU."""
    pytest.importorskip("gguf")
    from rankloop.models import prepare_models
    from rl.config import DPOTrainingConfig, SFTTrainingConfig
    from rl.dpo import train_dpo
    from rl.sft import train_sft
    from tests.test_reward_slow import HH, _load_hh

    if not HH.is_file():
        pytest.skip(f"{HH} is missing")
    prepare_models(workspace)
    _load_hh(workspace.db, 12)
    common = dict(max_steps=2, per_device_train_batch_size=2, max_length=256, report_to=[], eval_steps=100,
                  early_stopping_patience=0, save_steps=100)
    dpo = train_dpo(workspace, DPOTrainingConfig(name="dpo-real", **common), progress=False)
    assert dpo.metrics["global_step"] == 2 and dpo.metrics["device"]["bf16"] is False
    sft = train_sft(workspace, SFTTrainingConfig(policy="dpo-real", name="sft-real", **common), progress=False)
    assert sft.metrics["global_step"] == 2
    ppo = train_ppo(workspace, config(policy="sft-real", name="ppo-real", max_steps=2, max_new_tokens=16,
                                      report_to=[], max_prompts=8), reward_fn=count_e, progress=False)
    assert ppo.metrics["global_step"] == 2
