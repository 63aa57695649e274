"""`train_dpo` with a tiny model: loss falls, the chosen-vs-rejected margin rises, LoRA trains only adapters,
the policy row carries its lineage, configs are checked, and an interrupted run resumes to the same step."""

from __future__ import annotations

import pytest
import torch

from rl.config import DPOTrainingConfig, PolicyConfigError, load_section
from tests.reward_data import register_tiny, seed_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_dpo(**kw) -> DPOTrainingConfig:
    values = dict(policy="tiny", max_steps=8, eval_steps=4, save_steps=4, logging_steps=1, learning_rate=5e-3,
                  report_to=[], eval_fraction=0.25, per_device_train_batch_size=4, per_device_eval_batch_size=8)
    values.update(kw)
    return DPOTrainingConfig(**values)


def test_dpo_loss_falls_margin_rises_and_lineage_is_recorded(workspace, tiny_lm):
    from safetensors.torch import load_file

    from rl.dpo import train_dpo
    from store.models import get_model
    from store.runs import get_run

    seed_pairs(workspace.db, n=16)
    tiny_id = register_tiny(workspace.db, tiny_lm)
    result = train_dpo(workspace, tiny_dpo(name="dpo-v1"), progress=False)
    m = result.metrics
    assert m["last"]["loss"] < m["first"]["loss"]
    assert m["last"]["rewards/margins"] > m["first"]["rewards/margins"]
    assert m["eval_accuracy"] is not None and m["global_step"] == 8
    row = get_model(workspace.db, "dpo-v1")
    assert row.kind == "policy" and row.parent_id == tiny_id and row.run_id == result.run_id and row.round == 1
    run = get_run(workspace.db, result.run_id)
    assert run.status == "succeeded" and run.data_snapshot["train_pairs"] > 0 and run.data_snapshot["sha256"]
    assert run.metrics["device"]["bf16"] is False and run.metrics["device"]["gradient_checkpointing"] is False
    assert 0 < run.metrics["trainable"] < run.metrics["parameters"] / 2  # LoRA: adapters only
    before = load_file(str(tiny_lm / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed)  # LoRA on linear layers merged; embeddings/norms frozen
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()


def test_loss_variants_and_device_defaults_reach_trl(tmp_path):
    from rl.dpo import dpo_args
    from training.device import training_defaults

    dev = training_defaults("cpu", 10_000)
    args = dpo_args(tiny_dpo(loss_type=["ipo"], sft_replay=0.5), tmp_path, dev, True, False)
    assert args.loss_type == ["ipo", "sft"] and args.loss_weights == [1.0, 0.5]
    assert args.bf16 is False and args.use_cpu and args.metric_for_best_model == "eval_rewards/accuracies"
    args = dpo_args(tiny_dpo(loss_type=["robust"], label_smoothing=0.1), tmp_path, dev, False, False)
    assert args.loss_type == ["robust"] and args.label_smoothing == 0.1 and args.eval_strategy == "no"
    assert tiny_dpo(num_train_epochs=3, max_steps=-1).effective_precompute is True
    assert tiny_dpo().effective_precompute is False


@pytest.mark.parametrize("kw, message", [
    ({"loss_type": ["simpo2"]}, "loss_type: unknown"), ({"label_smoothing": 0.5}, "label_smoothing"),
    ({"beta": 0}, "beta: must be > 0"), ({"loss_type": ["ipo", "sigmoid"], "loss_weights": [1.0]}, "loss_weights"),
])
def test_bad_dpo_configs_name_the_field(kw, message):
    with pytest.raises(PolicyConfigError, match=message):
        tiny_dpo(**kw)


def test_dpo_section_of_rankloop_toml_then_flags(tmp_path):
    extra = {"dpo": {"beta": 0.2, "loss_type": ["ipo"]}}
    cfg = load_section(DPOTrainingConfig, "dpo", extra, tmp_path / "rankloop.toml", overrides={"max_steps": 3})
    assert (cfg.beta, cfg.loss_type, cfg.max_steps) == (0.2, ["ipo"], 3)
    with pytest.raises(PolicyConfigError, match=r"\[dpo\] betta: unknown field"):
        load_section(DPOTrainingConfig, "dpo", {"dpo": {"betta": 1}}, tmp_path / "rankloop.toml")


class StopAt:
    """A callback that interrupts training after `step` (Ctrl-C mid-run)."""

    @staticmethod
    def make(step: int):
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt

        return Stop()


def test_interrupted_dpo_run_resumes_to_the_same_step_count(workspace, tiny_lm):
    from rl.dpo import RUN_KIND, DPOTrainingConfig, train_dpo
    from rl.training import resume_config
    from store.runs import list_runs

    seed_pairs(workspace.db, n=12)
    register_tiny(workspace.db, tiny_lm)
    cfg = tiny_dpo(max_steps=6, save_steps=2, eval_steps=100, name="resumed")
    with pytest.raises(KeyboardInterrupt):
        train_dpo(workspace, cfg, progress=False, callbacks=[StopAt.make(5)])
    assert list_runs(workspace.db, kind="dpo")[-1].status == "cancelled"
    run_id, saved = resume_config(workspace, RUN_KIND, DPOTrainingConfig, "latest")
    assert saved == cfg
    result = train_dpo(workspace, saved, resume_from=run_id, progress=False)
    assert result.metrics["global_step"] == 6
    assert result.metrics["pairs_per_s"] > 0  # counts only the 2 steps this call ran


def policy_cli():
    import click

    import rankloop.commands.policy as policy
    from rankloop.commands.reward import eval_group, train_group

    @click.group()
    def cli() -> None:
        pass

    for command in (train_group, eval_group, policy.round_group):
        cli.add_command(command)
    return cli


def test_cli_train_dpo_then_resume_errors_cleanly(workspace, tiny_lm):
    import json

    from click.testing import CliRunner

    from store.models import get_model

    seed_pairs(workspace.db, n=12)
    register_tiny(workspace.db, tiny_lm)
    runner = CliRunner()
    args = ["train", "dpo", "-w", str(workspace.root), "--policy", "tiny", "--max-steps", "2", "--max-pairs", "20",
            "--loss", "ipo", "--beta", "0.2", "--set", "report_to=[]", "--set", "eval_steps=1", "--no-progress",
            "--json", "--name", "cli-dpo"]
    out = runner.invoke(policy_cli(), args)
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout[out.stdout.index("{\n  \"run_id\""):])
    assert payload["metrics"]["global_step"] == 2 and payload["metrics"]["train_pairs"] <= 20
    assert get_model(workspace.db, "cli-dpo").metrics["trainer"] == "dpo"
    bad = runner.invoke(policy_cli(), ["train", "dpo", "-w", str(workspace.root), "--resume"])
    assert bad.exit_code == 1 and "no unfinished dpo run" in bad.output
    bad = runner.invoke(policy_cli(), ["train", "dpo", "-w", str(workspace.root), "--set", "betta=1"])
    assert bad.exit_code == 1 and "betta: unknown field" in bad.output


def test_every_policy_command_has_help():
    from click.testing import CliRunner

    cli = policy_cli()
    for path in (["train", "dpo"], ["train", "sft"], ["train", "ppo"], ["eval", "policy"], ["round", "next"]):
        out = CliRunner().invoke(cli, [*path, "--help"])
        assert out.exit_code == 0 and "--workspace" in out.output, path


def test_precomputed_reference_log_probs_train_too(workspace, tiny_lm):
    from rl.dpo import train_dpo

    seed_pairs(workspace.db, n=8)
    register_tiny(workspace.db, tiny_lm)
    result = train_dpo(workspace, tiny_dpo(max_steps=3, precompute_ref_log_probs=True, eval_steps=100),
                       progress=False)
    assert result.metrics["global_step"] == 3 and result.metrics["last"]["loss"] < 0.7


def test_length_grouped_batches_and_checkpointing_reach_trl_and_train(workspace, tiny_lm):
    """The defaults batch pairs by length (the widest batch first, so a run that runs out of memory does so at
    once; far less padding than random batches of the same rows); a run with gradient checkpointing on (what a
    large batch gets by default) still trains: the loss falls and the merged weights move."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from rl.dpo import train_dpo
    from tests.preferences import Seed

    seed = Seed()
    for i in range(24):  # answers from 1 to 12 words: pairs of very different lengths
        seed.comparison(f"c{i}", f"Question {i}?", {"a": "yes " * (i % 12 + 1), "b": "no " * (i % 12 + 1)})
        seed.judge(f"c{i}", "alice", "a>b")
    seed.write(workspace.db)
    register_tiny(workspace.db, tiny_lm)
    batches: list[tuple[int, int]] = []  # (padded positions, real positions) of each batch

    class Widths(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            batches.extend((b["attention_mask"].numel(), int(b["attention_mask"].sum())) for b in train_dataloader)

    assert tiny_dpo().group_by_length is True
    result = train_dpo(workspace, tiny_dpo(max_steps=6, eval_steps=100, gradient_checkpointing=True),
                       progress=False, callbacks=[Widths()])
    grouped, batches[:] = list(batches), []
    assert grouped[0][0] == max(padded for padded, _ in grouped)
    m = result.metrics
    assert m["device"]["gradient_checkpointing"] is True and m["last"]["loss"] < m["first"]["loss"]
    before, after = load_file(tiny_lm / "model.safetensors"), load_file(result.model_dir / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)

    train_dpo(workspace, tiny_dpo(max_steps=1, eval_steps=100, group_by_length=False), progress=False,
              callbacks=[Widths()])

    def padding(runs: list[tuple[int, int]]) -> float:
        return 1 - sum(real for _, real in runs) / sum(padded for padded, _ in runs)

    assert padding(grouped) < 0.75 * padding(batches)
