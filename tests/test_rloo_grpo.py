"""`train_ppo` with `algo` 'rloo' / 'grpo' (TRL's RLOOTrainer / GRPOTrainer) on tiny models: the workspace reward
model scores, the policy row carries parent / run / reward lineage, LoRA weights change, an interrupted run resumes
to the same step count, and the `[ppo]` settings reach TRL with the per-device defaults."""

from __future__ import annotations

import math

import pytest
import torch

from rl.config import PolicyConfigError
from rl.ppo_config import PPOTrainingConfig
from tests.policy_helpers import Interrupt, count_e
from tests.reward_data import register_tiny, seed_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**kw) -> PPOTrainingConfig:
    values = dict(algo="rloo", policy="tiny", max_steps=3, save_steps=2, rollout_batch_size=2, num_generations=2,
                  num_minibatches=1, max_new_tokens=6, learning_rate=1e-2, report_to=[], splits=[])
    values.update(kw)
    return PPOTrainingConfig(**values)



@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_rloo_grpo_train_with_the_reward_model_and_record_lineage(workspace, tiny_lm, tmp_path, algo):
    from safetensors.torch import load_file

    from rl.ppo_run import train_ppo
    from store.models import get_model
    from store.runs import get_run
    from tests.policy_helpers import register_reward, tiny_reward_model

    seed_pairs(workspace.db, n=6)
    tiny_id = register_tiny(workspace.db, tiny_lm)
    rm_id = register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm))
    result = train_ppo(workspace, config(algo=algo, name=f"{algo}-v1", max_prompts=4), progress=False)
    row = get_model(workspace.db, f"{algo}-v1")
    assert row.kind == "policy" and row.parent_id == tiny_id and row.run_id == result.run_id
    assert row.metrics["trainer"] == algo and row.metrics["reward_model_id"] == rm_id
    run = get_run(workspace.db, result.run_id)
    assert run.kind == "ppo" and run.status == "succeeded" and run.config["config"]["algo"] == algo
    assert run.data_snapshot["reward_model_id"] == rm_id and run.data_snapshot["prompts"] == 4
    m = result.metrics
    assert m["global_step"] == 3
    assert isinstance(m["first_score"], float) and math.isfinite(m["first_score"])  # a real score, not None or NaN
    assert m["kl_coef"] == 0.05 and m["kl"] is not None
    assert run.metrics["device"]["bf16"] is False and run.metrics["device"]["gradient_checkpointing"] is False
    before = load_file(str(tiny_lm / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed)  # LoRA on the linear layers, merged; the rest frozen
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
    assert (result.run_dir / "checkpoint-2").is_dir() and len((result.run_dir / "history.jsonl").read_text().split())


def test_interrupted_rloo_run_resumes_to_the_same_step_count(workspace, tiny_lm):
    from rl.ppo_run import resume_ppo_config, train_ppo
    from store.runs import list_runs

    seed_pairs(workspace.db, n=4)
    register_tiny(workspace.db, tiny_lm)
    cfg = config(max_steps=4, name="cut")
    with pytest.raises(KeyboardInterrupt):
        train_ppo(workspace, cfg, reward_fn=Interrupt(at=3), progress=False)
    cut = list_runs(workspace.db, kind="ppo")[-1]
    assert cut.status == "cancelled"
    run_id, saved = resume_ppo_config(workspace, "latest")
    assert run_id == cut.id and saved == cfg
    with pytest.raises(ValueError, match="trained with algo 'rloo', not 'grpo'"):
        train_ppo(workspace, config(max_steps=4, name="cut", algo="grpo"), reward_fn=count_e, resume_from=run_id,
                  progress=False)
    resumed = train_ppo(workspace, saved, reward_fn=count_e, resume_from=run_id, progress=False)
    assert resumed.metrics["global_step"] == 4 and str(resumed.run_dir) == cut.output_path  # the old folder


def test_ppo_settings_and_device_defaults_reach_trl(tmp_path):
    from dataclasses import fields

    from trl import GRPOConfig, RLOOConfig

    from rl.rloo_grpo import trl_args
    from training.device import training_defaults

    dev = training_defaults("cpu", 10_000)
    args = trl_args(config(rollout_batch_size=4, num_generations=3, num_minibatches=2, logging_steps=1), tmp_path,
                    dev, False)
    assert isinstance(args, RLOOConfig)
    batches = (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.generation_batch_size)
    assert batches == (6, 2, 12)  # 4 prompts x 3 generations per update, in 2 micro-batches
    assert args.num_generations == 3 and args.max_completion_length == 6 and args.beta == 0.05
    assert args.bf16 is False and args.activation_checkpointing is False and args.use_cpu and args.logging_steps == 1
    assert args.learning_rate == 1e-2 and args.report_to == []
    args = trl_args(config(algo="grpo"), tmp_path, dev, False)
    assert isinstance(args, GRPOConfig) and args.beta == 0.05  # TRL's GRPO default is 0.0 (no KL anchor)
    assert {f.name: f.default for f in fields(GRPOConfig)}["beta"] == 0.0


def test_long_prompts_are_left_out_and_few_prompts_repeat(tiny_lm):
    from transformers import AutoTokenizer

    from rl.rloo_grpo import prompts_dataset

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    short, long = [{"role": "user", "content": "hi"}], [{"role": "user", "content": "one two three " * 40}]
    dataset, too_long = prompts_dataset(tok, [short, long], config(rollout_batch_size=3, max_prompt_length=32))
    assert too_long == 1 and len(dataset) == 3 and dataset[0]["prompt"] == short
    with pytest.raises(ValueError, match="every prompt is longer than max_prompt_length"):
        prompts_dataset(tok, [long], config(max_prompt_length=32))


@pytest.mark.parametrize("kw, message", [
    ({"algo": "dpo"}, "algo: must be 'ppo', 'rloo' or 'grpo'"),
    ({"num_generations": 1}, "num_generations: must be >= 2"),
])
def test_bad_rloo_grpo_configs_name_the_field(kw, message):
    with pytest.raises(PolicyConfigError, match=message):
        config(**kw)


def test_cli_train_ppo_with_algo_grpo(workspace, tiny_lm, tmp_path):
    from click.testing import CliRunner

    from store.models import get_model
    from tests.policy_helpers import register_reward, tiny_reward_model
    from tests.test_dpo import policy_cli

    seed_pairs(workspace.db, n=4)
    register_tiny(workspace.db, tiny_lm)
    register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm))
    args = ["train", "ppo", "-w", str(workspace.root), "--algo", "grpo", "--policy", "tiny", "--max-steps", "2",
            "--max-prompts", "2", "--name", "cli-grpo", "--no-progress", "--set", "rollout_batch_size=2",
            "--set", "num_minibatches=1", "--set", "num_generations=2", "--set", "max_new_tokens=4",
            "--set", "report_to=[]", "--set", "splits=[]"]
    out = CliRunner().invoke(policy_cli(), args)
    assert out.exit_code == 0, out.output
    assert "2 iterations" in out.output and "policy 'cli-grpo'" in out.output
    row = get_model(workspace.db, "cli-grpo")
    assert row.metrics["trainer"] == "grpo" and row.metrics["global_step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo"])
def test_real_default_model_runs_two_iterations(workspace, algo):
    """SmolLM2-135M-Instruct (the default policy) on 4 real HH prompts x 2 generations, 16 new tokens, LoRA, CPU.

    GRPO only: RLOO's trainer runs the same way on the tiny model above (training, lineage, resume), and with the real
    model it cost 75-110 s of the suite's 20-minute budget for the same question (does the default policy run under
    TRL's online trainers); add "rloo" back here to check it by hand."""
    pytest.importorskip("gguf")
    from rankloop.models import prepare_models
    from rl.ppo_run import train_ppo
    from tests.test_reward_slow import HH, _load_hh

    if not HH.is_file():
        pytest.skip(f"{HH} is missing")
    prepare_models(workspace)
    _load_hh(workspace.db, 8)
    cfg = config(algo=algo, policy="smollm2-135m-instruct", max_steps=2, rollout_batch_size=4, max_new_tokens=16,
                 max_prompts=8, learning_rate=1e-5, max_prompt_length=256)
    result = train_ppo(workspace, cfg, reward_fn=count_e, progress=False)
    assert result.metrics["global_step"] == 2 and result.metrics["prompts_too_long"] >= 0
    print(f"\n{algo}: {result.metrics['train_seconds']} s for 2 iterations ({cfg.rollout_batch_size} prompts x "
          f"{cfg.num_generations} samples x {cfg.max_new_tokens} tokens), metrics {result.metrics}")
