"""QLoRA (`quantization = "4bit"`) for the policy trainers: the config checks, and the clear errors where it cannot
run (no CUDA here, bitsandbytes missing). The CUDA path itself needs a GPU and bitsandbytes and is not run here."""

from __future__ import annotations

import sys

import pytest

from rl.config import DPOTrainingConfig, PolicyConfigError, SFTTrainingConfig
from rl.ppo_config import PPOTrainingConfig
from tests.reward_data import register_tiny, seed_pairs


def test_quantization_none_loads_nothing_and_4bit_needs_cuda():
    from rl.training import quantization_config

    assert quantization_config("none", "cpu") is None
    for device in ("cpu", "mps"):
        with pytest.raises(PolicyConfigError, match=rf"quantization: '4bit' \(QLoRA\) needs a CUDA GPU.*{device}"):
            quantization_config("4bit", device)


def test_4bit_without_bitsandbytes_says_how_to_install_it(monkeypatch):
    from rl.training import quantization_config

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    with pytest.raises(PolicyConfigError, match=r"needs bitsandbytes.*pip install 'rankloop\[gpu\]'"):
        quantization_config("4bit", "cuda:0")


@pytest.mark.parametrize("cls", [DPOTrainingConfig, SFTTrainingConfig, PPOTrainingConfig])
def test_quantization_field_is_checked_in_every_policy_config(cls):
    assert cls().quantization == "none"
    with pytest.raises(PolicyConfigError, match="quantization: must be 'none' or '4bit', got '8bit'"):
        cls(quantization="8bit")
    with pytest.raises(PolicyConfigError, match="quantization: '4bit' .* needs lora = true"):
        cls(quantization="4bit", lora=False)


def test_every_trainer_refuses_4bit_on_cpu_before_writing_a_run(workspace, tiny_lm):
    from rl.dpo import train_dpo
    from rl.ppo_run import train_ppo
    from rl.sft import train_sft
    from store.runs import list_runs

    seed_pairs(workspace.db, n=8)
    register_tiny(workspace.db, tiny_lm)
    common = dict(policy="tiny", quantization="4bit", device="cpu", report_to=[])
    for train, cfg in ((train_dpo, DPOTrainingConfig(**common)), (train_sft, SFTTrainingConfig(**common)),
                       (train_ppo, PPOTrainingConfig(**common, algo="grpo", splits=[]))):
        kw = {"reward_fn": lambda p, r: [0.0] * len(r)} if train is train_ppo else {}
        with pytest.raises(PolicyConfigError, match="needs a CUDA GPU"):
            train(workspace, cfg, progress=False, **kw)
    assert list_runs(workspace.db) == []


def test_cli_names_the_field_when_4bit_cannot_run(workspace, tiny_lm):
    from click.testing import CliRunner

    from tests.test_dpo import policy_cli

    seed_pairs(workspace.db, n=4)
    register_tiny(workspace.db, tiny_lm)
    out = CliRunner().invoke(policy_cli(), ["train", "dpo", "-w", str(workspace.root), "--policy", "tiny",
                                            "--device", "cpu", "--set", "quantization=4bit", "--no-progress"])
    assert out.exit_code == 1 and "quantization: '4bit' (QLoRA) needs a CUDA GPU" in out.output
