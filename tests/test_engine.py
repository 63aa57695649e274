"""The sampling engine (`--engine hf|vllm`, `[generation] engine`): without vLLM installed every command that samples
refuses 'vllm' naming the `gpu` extra and leaves the workspace exactly as it was; with a stand-in `vllm` module the
vLLM path stores what the HF path stores (seeds seed + b, batches, indices, parameters, lineage), LoRA policies
going through a LoRARequest. No GPU and no real vLLM needed."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
from click.testing import CliRunner

from rankloop.cli import main
from rl.config import SamplingParams
from store.db import read
from store.models import get_model
from tests.conftest import table_hash
from tests.policy_helpers import register_policy
from tests.test_sampling import add_prompts


@pytest.fixture
def no_vllm(monkeypatch):
    """vLLM not importable, even on a machine that has it."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))


@pytest.fixture
def ws(workspace, tiny_lm):
    add_prompts(workspace, 3)
    add_prompts(workspace, 2, split="eval", start=100)
    v0 = register_policy(workspace.db, tiny_lm, "v0")
    register_policy(workspace.db, tiny_lm, "v1", parent_id=v0)
    return workspace


@pytest.mark.parametrize("argv", [
    ["generate", "--policy", "v1", "--prompts", "2"],
    ["round", "next", "--prompts", "2"],
    ["eval", "policy", "v1", "--against", "v0"],
    ["loop", "--rounds", "1", "--simulate", "length", "--policy", "v1"],
], ids=lambda a: " ".join(a[:2]))
def test_engine_vllm_without_vllm_names_the_gpu_extra_and_writes_nothing(ws, no_vllm, argv):
    before = table_hash(ws.db)
    runs_before = sorted(p.name for p in ws.runs_dir.iterdir()) if ws.runs_dir.exists() else []
    out = CliRunner().invoke(main, [*argv, "--engine", "vllm", "-w", str(ws.root)])
    assert out.exit_code == 1, out.output
    assert "pip install 'rankloop[gpu]'" in out.output and "engine 'vllm'" in out.output
    assert "Traceback" not in out.output
    assert table_hash(ws.db) == before  # no round, no response, no run row
    assert (sorted(p.name for p in ws.runs_dir.iterdir()) if ws.runs_dir.exists() else []) == runs_before


def test_the_workspace_setting_picks_the_engine_and_the_flag_overrides_it(ws, no_vllm):
    toml = ws.root / "rankloop.toml"
    text = toml.read_text(encoding="utf-8")
    assert 'engine = "hf"' in text  # `rankloop init` writes the declared field with its help
    toml.write_text(text.replace('engine = "hf"', 'engine = "vllm"', 1), encoding="utf-8")
    before = table_hash(ws.db)
    w = ["-w", str(ws.root)]
    out = CliRunner().invoke(main, ["generate", "--policy", "v1", "--prompts", "1", *w])
    assert out.exit_code == 1 and "rankloop[gpu]" in out.output, out.output
    out = CliRunner().invoke(main, ["round", "next", "--prompts", "1", *w])
    assert out.exit_code == 1 and "rankloop[gpu]" in out.output, out.output
    assert table_hash(ws.db) == before
    out = CliRunner().invoke(main, ["generate", "--policy", "v1", "--prompts", "1", "--k", "2",
                                    "--max-new-tokens", "2", "--engine", "hf", *w])
    assert out.exit_code == 0, out.output
    assert read(ws.db, lambda con: con.execute("SELECT count(*) FROM comparisons").fetchone()[0]) == 1


def test_an_unknown_engine_is_refused_by_the_declaration():
    with pytest.raises(ValueError, match="engine"):
        SamplingParams(engine="tgi")
    out = CliRunner().invoke(main, ["generate", "--engine", "tgi"])
    assert out.exit_code == 2 and "tgi" in out.output


class _FakeLLM:
    """Stands in for vllm.LLM: k samples per request, each a function of (request seed, prompt, sample index)."""
    made: list[dict] = []
    calls: list[tuple] = []

    def __init__(self, **kw):
        _FakeLLM.made.append(kw)

    def generate(self, requests, sp, lora_request=None, use_tqdm=True):
        _FakeLLM.calls.append((sp.seed, len(requests), lora_request and lora_request.lora_path))
        out = []
        for r in requests:
            ids = r["prompt_token_ids"]
            outs = []
            for j in range(sp.n):
                toks = [(sp.seed * 7 + sum(ids) + 3 * j + t) % 50 + 10 for t in range(min(3, sp.max_tokens))]
                stop = j % 2 == 0 and sp.max_tokens > 3
                outs.append(types.SimpleNamespace(index=j, token_ids=toks + ([sp.stop_token_ids[0]] if stop else []),
                                                  finish_reason="stop" if stop else "length"))
            out.append(types.SimpleNamespace(outputs=outs))
        return out


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = _FakeLLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, i, path: types.SimpleNamespace(lora_name=name, lora_int_id=i, lora_path=path)
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: types.SimpleNamespace() if name == "vllm" else real(name, *a))
    import rl.vllm_engine

    monkeypatch.setattr(rl.vllm_engine, "require_cuda", lambda device: None)
    _FakeLLM.made.clear()
    _FakeLLM.calls.clear()


def test_the_vllm_path_stores_what_the_hf_path_stores(ws, fake_vllm):
    from rl.sampling import generate_candidates

    params = SamplingParams(k=2, max_new_tokens=5, batch_size=4, seed=7, engine="vllm")  # 2 prompts per batch
    result = generate_candidates(ws.db, get_model(ws.db, "v1"), n_prompts=3, params=params, round=1, split="train")
    assert (result.prompts, result.responses, result.comparisons, result.batches) == (3, 6, 3, 2)
    assert [c[0] for c in _FakeLLM.calls] == [7, 8]  # per-request seed: seed + batch
    assert _FakeLLM.made[0]["model"] == get_model(ws.db, "v1").path and "enable_lora" not in _FakeLLM.made[0]
    rows = read(ws.db, lambda con: con.execute(
        "SELECT r.seed, r.params, r.text, r.model_name FROM responses r ORDER BY r.id").fetchall())
    stored = [(seed, json.loads(p), text, name) for seed, p, text, name in rows]
    assert {name for *_, name in stored} == {"v1"}
    for seed, p, text, _ in stored:
        assert seed == 7 + p["batch"] and p["engine"] == "vllm" and p["k"] == 2
        assert (p["temperature"], p["top_p"], p["max_new_tokens"]) == (0.8, 0.95, 5)
        assert p["finished"] == (p["index"] % 2 == 0) and p["new_tokens"] == (4 if p["finished"] else 3)
        assert text
    assert sorted(p["index"] for _, p, _, _ in stored) == [0, 0, 0, 1, 1, 1]
    again = read(ws.db, lambda con: con.execute("SELECT count(*) FROM comparisons WHERE round = 1").fetchone()[0])
    assert again == 3


def test_a_lora_policy_is_served_through_a_lora_request(ws, fake_vllm, tmp_path):
    from rl.sampling import generate_candidates
    from store.models import add_model

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}), encoding="utf-8")
    base = get_model(ws.db, "v1").path
    add_model(ws.db, "lora", "policy", path=base, adapter_path=str(adapter))
    params = SamplingParams(k=2, max_new_tokens=2, batch_size=8, seed=0, engine="vllm")
    generate_candidates(ws.db, get_model(ws.db, "lora"), n_prompts=2, params=params)
    assert _FakeLLM.made[0]["enable_lora"] is True and _FakeLLM.made[0]["max_lora_rank"] == 8
    assert _FakeLLM.calls == [(0, 2, str(adapter))]


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_rloo_and_grpo_use_trls_colocated_vllm_mode_with_the_vllm_engine(fake_vllm, tmp_path, algo):
    from rl.ppo_config import PPOTrainingConfig
    from rl.rloo_grpo import trl_args

    dev = types.SimpleNamespace(device="cpu", bf16=False, gradient_checkpointing=False)
    config = PPOTrainingConfig(algo=algo)
    hf, vllm = (trl_args(config, tmp_path, dev, False, engine) for engine in ("hf", "vllm"))
    assert (hf.use_vllm, vllm.use_vllm, vllm.vllm_mode) == (False, True, "colocate")


def test_train_ppo_grpo_with_the_vllm_engine_and_no_vllm_writes_nothing(ws, no_vllm):
    from rl.ppo_config import PPOTrainingConfig
    from rl.ppo_run import train_ppo

    ws.config.generation.engine = "vllm"
    before = table_hash(ws.db)
    with pytest.raises(ValueError, match=r"rankloop\[gpu\]"):
        train_ppo(ws, PPOTrainingConfig(algo="grpo", policy="v1"), reward_fn=lambda p, r: [0.0] * len(r))
    assert table_hash(ws.db) == before


def test_the_shipped_accelerate_configs_use_keys_accelerate_knows():
    """configs/accelerate/*.yaml load as accelerate configs, and every fsdp_/deepspeed_ key is a launch option."""
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    known = {a.dest for a in launch_command_parser()._actions}
    files = sorted((Path(__file__).resolve().parents[1] / "configs" / "accelerate").glob("*.yaml"))
    kinds = {}
    for path in files:
        config = load_config_from_file(str(path))
        assert path.read_text(encoding="utf-8").startswith("#") and "accelerate launch --config_file" in \
            path.read_text(encoding="utf-8"), f"{path.name}: no header with its command"
        unknown = [k for k in [*(config.fsdp_config or {}), *(config.deepspeed_config or {})] if k not in known]
        assert unknown == [], f"{path.name}: {unknown}"
        kinds[path.stem] = (str(config.distributed_type).split(".")[-1], (config.fsdp_config or {}).get(
            "fsdp_version"), (config.deepspeed_config or {}).get("zero_stage"),
            (config.deepspeed_config or {}).get("offload_param_device"))
    assert kinds == {"ddp": ("MULTI_GPU", None, None, None), "fsdp": ("FSDP", 2, None, None),
                     "deepspeed_zero2": ("DEEPSPEED", None, 2, "none"),
                     "deepspeed_zero3_offload": ("DEEPSPEED", None, 3, "cpu")}
