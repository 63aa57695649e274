"""Options are declared once, in the config dataclasses (training.config.option): the click options of `train`,
`round next`, `loop` and `generate`, the Runs page's form (rankloop/job_commands.py), the TOML comments and the
README's CLI reference must say what the field says: flag, default, help, bounds. Each test fails on a disagreement."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import click
import pytest

from rankloop.cli import main
from rankloop.config import SECTIONS, Config, render_config
from rankloop.job_commands import COMMANDS, _config_classes
from rankloop.loop_config import LoopConfig
from reward.config import RewardTrainingConfig
from rl.config import (
    DPOTrainingConfig,
    KTOTrainingConfig,
    PolicyEvalConfig,
    RoundConfig,
    SamplingParams,
    SFTTrainingConfig,
)
from rl.ppo_config import PPOTrainingConfig
from training.config import bounds_text, default_of, field_of, field_type, main_flag, render_toml_section

ROOT = Path(__file__).resolve().parents[1]

# Each command whose options are made from a config: its argv and that config's section (job_commands' names).
GENERATED = {("train", "reward"): "reward", ("train", "sft"): "sft", ("train", "dpo"): "dpo",
             ("train", "kto"): "kto", ("train", "ppo"): "ppo", ("round", "next"): "round", ("loop",): "loop",
             ("generate",): "generation"}
# Commands whose options are made from a config that is not a rankloop.toml section nor on the Runs page.
CLI_ONLY = {("eval", "policy"): PolicyEvalConfig}


def cli_command(argv: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for word in argv:
        assert isinstance(command, click.Group), argv
        command = command.commands[word]
    return command


def field_params(argv: tuple[str, ...]) -> list[tuple[click.Option, type]]:
    """The command's options that mirror a field of its config (the parameter is named after the field)."""
    cls = CLI_ONLY[argv] if argv in CLI_ONLY else _config_classes()[GENERATED[argv]]
    names = {f.name for f in fields(cls)}
    return [(p, cls) for p in cli_command(argv).params if isinstance(p, click.Option) and p.name in names]


def shown(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return format(value, "g") if isinstance(value, float) else str(value)


def disagreements_of_cli(argv: tuple[str, ...]) -> list[str]:
    out = []
    for param, cls in field_params(argv):
        name, f = param.name, field_of(cls, param.name)
        where = f"rankloop {' '.join(argv)} {param.opts[0]}"
        if param.opts[0] != main_flag(f):
            out.append(f"{where}: the field {name} declares the flag {main_flag(f)}")
        if not (param.help or "").startswith(f.metadata["help"]):
            out.append(f"{where}: help {param.help!r} is not the field's {f.metadata['help']!r}")
        default = default_of(cls, name)
        if default not in (None, "", [], False) and f"{shown(default)}]" not in param.help.split("[default: ")[-1]:
            out.append(f"{where}: the help does not show the default {default!r}")
        if bounds_text(f.metadata) and f"[{bounds_text(f.metadata)}]" not in param.help:
            out.append(f"{where}: the help does not show the bounds {bounds_text(f.metadata)}")
        if param.default not in (None, ()):
            out.append(f"{where}: a click default {param.default!r} would hide the config's value")
        want = field_type(cls, name)
        if getattr(want, "__origin__", None) is list:
            if not param.multiple:
                out.append(f"{where}: the field is a list, the option is not repeatable")
        elif want in (int, float) and param.type.name != {int: "integer", float: "float"}[want]:
            out.append(f"{where}: type {param.type.name}, the field is {want.__name__}")
        if f.metadata.get("choices") and want is str and list(getattr(param.type, "choices", [])) != list(
                f.metadata["choices"]):
            out.append(f"{where}: choices {getattr(param.type, 'choices', None)} are not {f.metadata['choices']}")
    return out


def disagreements_of_form(command: str) -> list[str]:
    out = []
    spec = COMMANDS[command]
    cli = {p.opts[0]: p for p in cli_command(spec.argv).params if isinstance(p, click.Option)}
    for option in spec.options:
        if option.field is None:
            continue
        section, name = option.field
        cls = _config_classes()[section]
        f, meta, where = field_of(cls, name), field_of(cls, name).metadata, f"Runs form `{command}` {option.flag}"
        param = cli.get(option.flag)
        if param is None or param.name != name:
            out.append(f"{where}: the CLI has no {option.flag} for the field {name}")
        if option.flag != main_flag(f):
            out.append(f"{where}: the field {name} declares the flag {main_flag(f)}")
        if not option.help.startswith(meta["help"]):
            out.append(f"{where}: help {option.help!r} is not the field's {meta['help']!r}")
        if option.default is not None and option.default != default_of(cls, name):
            out.append(f"{where}: default {option.default!r}, the field's is {default_of(cls, name)!r}")
        low = meta.get("gt") if meta.get("gt") is not None else meta.get("ge")
        high = meta.get("lt") if meta.get("lt") is not None else meta.get("le")
        if (option.minimum, option.above, option.maximum, option.below, option.unset) != (
                low, meta.get("gt") is not None, high, meta.get("lt") is not None, meta.get("unset")):
            out.append(f"{where}: bounds {option.minimum}..{option.maximum}, the field's are {bounds_text(meta)!r}")
        if meta.get("choices") and tuple(option.choices) != tuple(meta["choices"]):
            out.append(f"{where}: choices {option.choices}, the field's are {meta['choices']}")
    return out


@pytest.mark.parametrize("argv", [*GENERATED, *CLI_ONLY], ids=" ".join)
def test_cli_options_and_runs_form_agree_with_the_config_fields(argv):
    """The disagreement test: a CLI option or a form field that says another flag, default, help or bounds than
    its config field fails here, naming both."""
    assert field_params(argv), f"rankloop {' '.join(argv)} mirrors no config field"
    forms = [c for c, spec in COMMANDS.items() if spec.argv == argv]
    problems = disagreements_of_cli(argv) + [p for c in forms for p in disagreements_of_form(c)]
    assert problems == []


def test_every_form_option_of_a_config_command_mirrors_its_field():
    """A hand-written form option for a field that a CLI option mirrors would escape the comparison above."""
    for command, spec in COMMANDS.items():
        if spec.argv not in GENERATED:
            continue
        mirrored = {p.opts[0] for p, _ in field_params(spec.argv)}
        hand_written = [o.flag for o in spec.options if o.field is None and o.flag in mirrored]
        assert hand_written == [], command


def test_a_disagreement_is_found(monkeypatch):
    """The check itself: a form option whose bounds, default or help differ from the field's is reported."""
    from dataclasses import replace

    spec = COMMANDS["round next"]
    broken = tuple(replace(o, minimum=1, default=5) if o.flag == "--k" else o for o in spec.options)
    monkeypatch.setitem(COMMANDS, "round next", replace(spec, options=broken))
    problems = disagreements_of_form("round next")
    assert any("--k: default 5" in p for p in problems) and any("--k: bounds 1" in p for p in problems)


CONFIGS = [RewardTrainingConfig, DPOTrainingConfig, SFTTrainingConfig, KTOTrainingConfig, PPOTrainingConfig,
           LoopConfig, SamplingParams, RoundConfig, PolicyEvalConfig]
BASE = {LoopConfig: {"simulate": "length-in-range", "reviewers": 50},  # reviewers' bounds apply when simulated
        PPOTrainingConfig: {"num_minibatches": 1},  # it must divide rollout_batch_size
        KTOTrainingConfig: {"loss_type": "apo_zero_unpaired"}}  # 'kto' needs batches of 2 (its KL pairs)


def outside(meta, key: str, is_int: bool) -> float:
    step = 1 if is_int else 1e-9
    return meta[key] - step if key == "ge" else meta[key] + step if key == "le" else meta[key]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_declared_bounds_are_the_ones_the_config_enforces(cls):
    """The bounds a field declares (shown by --help, enforced by the form) are exactly what `__post_init__` checks:
    the bound itself passes (when inclusive), a value just outside fails."""
    checked = 0
    for f in fields(cls):
        is_int = field_type(cls, f.name) is int
        for key in ("ge", "gt", "le", "lt"):
            if f.metadata.get(key) is None:
                continue
            checked += 1
            if key in ("ge", "le"):
                cls(**{**BASE.get(cls, {}), f.name: int(f.metadata[key]) if is_int else f.metadata[key]})
            bad = outside(f.metadata, key, is_int)
            if bad == f.metadata.get("unset"):
                continue
            with pytest.raises(ValueError, match=re.escape(f.name) if cls is not LoopConfig else None):
                cls(**{**BASE.get(cls, {}), f.name: int(bad) if is_int else bad})
    assert checked >= 3


def test_toml_comments_are_the_fields_help():
    text = render_config(Config())
    for name, cls in SECTIONS.items():
        block = text.split(f"[{name}]\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert block[0::2] == [f"# {f.metadata['help']}" for f in fields(cls)], name
        assert [line.split(" = ")[0] for line in block[1::2]] == [f.name for f in fields(cls)], name
    for section, cls in {"reward": RewardTrainingConfig, "dpo": DPOTrainingConfig, "kto": KTOTrainingConfig,
                         "ppo": PPOTrainingConfig}.items():
        lines = render_toml_section(cls(), section).splitlines()[1:]
        assert lines[0::2] == [f"# {f.metadata['help']}" for f in fields(cls)]


def readme_reference() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## CLI reference", 1)[1].split("\n## ", 1)[0]


def test_the_readme_cli_reference_agrees_with_the_declarations():
    """Each row of the README's table for a generated command: its flags exist, a number shown is the declared
    default, `a|b` lists the declared choices."""
    checked = 0
    for row in re.findall(r"^\| `rankloop ([^`]+)` \|", readme_reference(), re.M):
        words = row.split()
        argv = next((a for a in GENERATED if tuple(words[:len(a)]) == a), None)
        if argv is None:
            continue
        params = {o: p for p in cli_command(argv).params for o in p.opts}
        cls = _config_classes()[GENERATED[argv]]
        for flag, value in re.findall(r"(--[\w-]+)(?: ([^\]\s]+))?", row):
            checked += 1
            assert flag in params, f"README: rankloop {' '.join(argv)} has no {flag}"
            param = params[flag]
            if param.name not in {f.name for f in fields(cls)}:
                continue
            default = default_of(cls, param.name)
            if re.fullmatch(r"[\d.]+", value or ""):
                assert float(value) == default, f"README: {flag} {value}, the declared default is {default}"
            elif "\\|" in (value or ""):
                assert value.split("\\|") == list(field_of(cls, param.name).metadata["choices"]), flag
    assert checked >= 8
    every_train = re.search(r"Every `train` command takes (.+?)writes TensorBoard", readme_reference(), re.S)
    assert every_train is not None
    for argv in [a for a in GENERATED if a[0] == "train"]:
        flags = {o for p in cli_command(argv).params for o in p.opts}
        for flag in set(re.findall(r"--[\w-]+", every_train.group(1))) - {"--max-pairs", "--max-prompts"}:
            assert flag in flags, f"README: every train command takes {flag}, `{' '.join(argv)}` does not"
        assert ("--max-prompts" if argv[1] == "ppo" else "--max-pairs") in flags


def test_an_option_the_chosen_algorithm_ignores_is_refused(workspace):
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["train", "ppo", "--algo", "grpo", "--target-kl", "3", "--set", "gamma=0.9",
                                       "-w", str(workspace.root)])
    assert result.exit_code == 1
    assert "--set gamma, --target-kl: algo 'grpo' never reads them (only 'ppo' does)" in result.output
    result = CliRunner().invoke(main, ["train", "ppo", "--set", "num_generations=8", "-w", str(workspace.root)])
    assert result.exit_code == 1
    assert "--set num_generations: algo 'ppo' never reads it (only 'grpo' or 'rloo' do)" in result.output


def test_one_default_policy():
    from rankloop.config import ModelsSection
    from rankloop.models import DEFAULT_POLICY_NAME
    from training.models import DEFAULT_POLICY

    assert DEFAULT_POLICY_NAME is DEFAULT_POLICY
    defaults = {ModelsSection().policy, RewardTrainingConfig().base, DPOTrainingConfig().policy,
                PPOTrainingConfig().policy, LoopConfig().policy}
    assert defaults == {DEFAULT_POLICY}
    names = [p.relative_to(ROOT) for pkg in ("rankloop", "reward", "rl", "training")
             for p in (ROOT / pkg).rglob("*.py") if f'"{DEFAULT_POLICY}"' in p.read_text(encoding="utf-8")]
    assert names == [Path("training/models.py")]


def test_simulated_reviewers_options_without_simulate_are_refused(workspace):
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["loop", "--noise", "0.1", "--reviewers", "2", "-w", str(workspace.root)])
    assert result.exit_code == 1
    assert ("--noise, --reviewers: reviewing 'people' never reads them (only 'simulated' does); leave them out or "
            "give --simulate ORACLE") in result.output
