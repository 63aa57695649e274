"""The reward config: TOML section, --config file and CLI overrides, each bad value named by file, section, field."""

from __future__ import annotations

import pytest

from reward.config import (
    RewardConfigError,
    RewardTrainingConfig,
    config_from_dict,
    load_reward_config,
    parse_assignment,
    render_reward_section,
)
from training.device import training_defaults


def test_defaults_are_valid_and_every_field_has_help():
    from dataclasses import fields

    cfg = RewardTrainingConfig()
    assert cfg.method == "probe" and cfg.base == "smollm2-135m-instruct" and cfg.probe_precision == "float32"
    assert cfg.report_to == ["tensorboard"] and cfg.center_rewards_coefficient == 0.01
    assert all(f.metadata.get("help") for f in fields(cfg))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("method", "qlora", "method: must be 'auto', 'lora', 'full' or 'probe'"),
    ("eval_fraction", 1.5, "eval_fraction: must be in (0, 1)"),
    ("lora_r", 0, "lora_r: must be >= 1"),
    ("max_steps", 0, "max_steps: must be >= 1"),
    ("learning_rate", 2.0, "learning_rate: must be in (0, 1)"),
    ("report_to", ["tensorbored"], "report_to: unknown ['tensorbored']"),
    ("device", "tpu", "device: must be 'cpu'"),
    ("min_agreement", 1.5, "min_agreement: must be in [0, 1]"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(RewardConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        RewardTrainingConfig(**{field: value})


def test_toml_errors_name_file_section_and_field(tmp_path):
    path = tmp_path / "rankloop.toml"
    with pytest.raises(RewardConfigError) as e:
        load_reward_config({"reward": {"lora_r": "eight"}}, path)
    assert str(e.value).startswith(f"{path}: [reward] lora_r: expected int, got str")
    with pytest.raises(RewardConfigError, match=r"\[reward\] lora_rank: unknown field"):
        load_reward_config({"reward": {"lora_rank": 8}}, path)
    with pytest.raises(RewardConfigError, match=r"\[reward\] eval_fraction: must be in"):
        load_reward_config({"reward": {"eval_fraction": 0}}, path)
    with pytest.raises(RewardConfigError, match=r"\[reward\] must be a table"):
        load_reward_config({"reward": 3}, path)


def test_layers_workspace_then_file_then_flags(tmp_path):
    extra = tmp_path / "extra.toml"
    extra.write_text('[reward]\nlora_r = 4\nrounds = [1, 2]\nlearning_rate = 1\n', encoding="utf-8")
    with pytest.raises(RewardConfigError, match=rf"{extra}: \[reward\] learning_rate: must be in"):
        load_reward_config({}, tmp_path / "rankloop.toml", extra)
    extra.write_text('[reward]\nlora_r = 4\nrounds = [1, 2]\nlearning_rate = 2e-4\n', encoding="utf-8")
    cfg = load_reward_config({"reward": {"lora_r": 8, "max_steps": 7}}, tmp_path / "rankloop.toml", extra,
                             {"max_steps": 3})
    assert (cfg.lora_r, cfg.rounds, cfg.learning_rate, cfg.max_steps) == (4, [1, 2], 2e-4, 3)
    with pytest.raises(RewardConfigError, match="command line: max_steps: expected int, got str"):
        load_reward_config({}, tmp_path / "rankloop.toml", None, {"max_steps": "many"})


def test_set_assignments_read_values_as_toml():
    assert parse_assignment("lora_r=8") == ("lora_r", 8)
    assert parse_assignment("rounds = [1, 2]") == ("rounds", [1, 2])
    assert parse_assignment("base=some/model") == ("base", "some/model")
    with pytest.raises(RewardConfigError, match="expected FIELD=VALUE"):
        parse_assignment("lora_r")


def test_rendered_section_parses_back_to_the_same_config():
    import tomllib

    cfg = RewardTrainingConfig(rounds=[0, 3], method="lora", margin=True, name='my "rm"')
    parsed = config_from_dict(tomllib.loads(render_reward_section(cfg))["reward"])
    assert parsed == cfg


def test_auto_method_is_full_below_100m_parameters_and_lora_above():
    from reward.backbone import resolve_method

    assert resolve_method("auto", 22_700_000)[0] == "full"  # all-MiniLM-L6-v2
    assert resolve_method("auto", 134_500_000)[0] == "lora"  # SmolLM2-135M
    assert resolve_method("lora", 10) == ("lora", "set in the config")


def test_device_defaults_differ_from_trl_on_cpu_with_reasons():
    dev = training_defaults("cpu", n_params=135_000_000)
    assert (dev.device, dev.bf16, dev.gradient_checkpointing) == ("cpu", False, False)
    assert "emulated" in dev.reasons["bf16"] and "40%" in dev.reasons["gradient_checkpointing"]
    forced = training_defaults("cpu", n_params=10, bf16=True, gradient_checkpointing=True)
    assert forced.bf16 and forced.gradient_checkpointing and "warning" in forced.reasons["bf16"]
    with pytest.raises(ValueError, match="device: unknown 'tpu'"):
        training_defaults("tpu", n_params=10)
