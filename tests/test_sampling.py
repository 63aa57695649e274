"""Sampling candidates from a policy: comparisons queued per prompt, seeds and parameters stored, reproducible."""

import json

import pytest
from click.testing import CliRunner

from rankloop.commands.generate import generate_command
from rankloop.config import Config, GenerationSection, ModelsSection
from rankloop.workspace import init_workspace
from rl.sampling import SamplingParams, generate_candidates, load_policy, sample_completions, split_completion
from store.batch import Batch, Comparison, Prompt, Response, write_batch
from store.db import read, write
from store.models import add_model, get_model
from tests.conftest import table_hash

FAST = dict(max_new_tokens=6, batch_size=6, seed=0)


def add_prompts(ws, n, split="train", start=0):
    prompts = [Prompt(start + i, [{"role": "user", "content": f"Question {start + i}: one two three"}], split=split)
               for i in range(n)]
    write(ws.db, lambda con: write_batch(con, Batch(prompts=prompts)))


@pytest.fixture
def ws(workspace, tiny_lm):
    add_prompts(workspace, 5)
    add_prompts(workspace, 2, split="eval", start=100)
    add_model(workspace.db, "tiny", "policy", path=str(tiny_lm))
    return workspace


def rows(db, sql, params=()):
    return read(db, lambda con: con.execute(sql, list(params)).fetchall())


def texts_by_prompt(db):
    got = rows(db, "SELECT p.messages, r.text, r.params FROM responses r JOIN prompts p ON p.id = r.prompt_id")
    return sorted((m, json.loads(p)["index"], t) for m, t, p in got)


def test_one_comparison_per_prompt_with_k_responses_round_and_reviewers(ws):
    params = SamplingParams(k=3, **FAST)  # 6 // 3 = 2 prompts per batch
    result = generate_candidates(ws.db, get_model(ws.db, "tiny"), n_prompts=3, params=params, round=2,
                                 required_reviewers=2)
    assert (result.prompts, result.responses, result.comparisons, result.batches) == (3, 9, 3, 2)
    assert result.new_tokens > 0 and result.tokens_per_s > 0

    comps = rows(ws.db, "SELECT id, prompt_id, response_ids, round, required_reviewers, source FROM comparisons")
    assert sorted(c[0] for c in comps) == sorted(result.comparison_ids)
    model_id = get_model(ws.db, "tiny").id
    for _, prompt_id, response_ids, rnd, required, source in comps:
        assert (rnd, required, source, len(response_ids)) == (2, 2, "sample", 3)
        resp = rows(ws.db, "SELECT prompt_id, model_id, model_name, seed, params, text FROM responses "
                           "WHERE id IN (SELECT unnest(?)) ORDER BY id", [response_ids])
        assert {r[0] for r in resp} == {prompt_id}
        assert {(r[1], r[2]) for r in resp} == {(model_id, "tiny")}
        stored = [json.loads(r[4]) for r in resp]
        assert [p["index"] for p in stored] == [0, 1, 2]
        for (_, _, _, seed, _, text), p in zip(resp, stored, strict=True):
            assert seed == params.seed + p["batch"]  # the per-batch seed is stored
            assert (p["temperature"], p["top_p"], p["max_new_tokens"]) == (0.8, 0.95, 6)
            assert isinstance(p["finished"], bool) and 1 <= p["new_tokens"] <= 6
            assert "<|im_end|>" not in text and "<pad>" not in text
    assert {r[0] for r in rows(ws.db, "SELECT seed FROM responses")} == {0, 1}  # two batches, two seeds


def test_the_same_seed_gives_the_same_texts(tmp_path, tiny_lm):
    def run(name, seed):
        w = init_workspace(tmp_path / name)
        add_prompts(w, 4)
        add_model(w.db, "tiny", "policy", path=str(tiny_lm))
        params = SamplingParams(k=2, max_new_tokens=8, batch_size=4, seed=seed)
        generate_candidates(w.db, get_model(w.db, "tiny"), n_prompts=4, params=params)
        return texts_by_prompt(w.db)

    first, again, other = run("a", 7), run("b", 7), run("c", 8)
    assert first == again
    assert first != other


def test_shared_prompt_cache_samples_the_same_tokens_as_num_return_sequences(tiny_lm):
    model, tok = load_policy(str(tiny_lm))
    convs = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "one two three four five six"}]]
    params = SamplingParams(k=3, max_new_tokens=10, batch_size=6, seed=3)
    shared = sample_completions(model, tok, convs, params, share_prefix=True)
    plain = sample_completions(model, tok, convs, params, share_prefix=False)
    assert [[c.text for c in cs] for cs in shared] == [[c.text for c in cs] for cs in plain]
    assert all(len(cs) == 3 for cs in shared)


def test_prompts_already_compared_are_not_picked_again(ws):
    row, params = get_model(ws.db, "tiny"), SamplingParams(k=2, **FAST)
    assert generate_candidates(ws.db, row, n_prompts=2, params=params, split="train").comparisons == 2
    second = generate_candidates(ws.db, row, n_prompts=10, params=params, split="train")
    assert second.comparisons == 3  # the 3 train prompts left
    used = [r[0] for r in rows(ws.db, "SELECT prompt_id FROM comparisons")]
    assert len(used) == len(set(used)) == 5
    assert {r[0] for r in rows(ws.db, "SELECT split FROM prompts WHERE id IN (SELECT prompt_id FROM comparisons)")} \
        == {"train"}
    third = generate_candidates(ws.db, row, n_prompts=10, params=params, split="train")
    assert (third.prompts, third.comparisons, third.device) == (0, 0, "none")  # nothing left: no model loaded


def test_eos_and_padding_are_stripped_and_counted():
    assert split_completion([5, 6, 2, 2, 2], {2}) == ([5, 6], 3, True)
    assert split_completion([5, 6, 7], {2}) == ([5, 6, 7], 3, False)
    assert split_completion([9, 1], {1, 9}) == ([], 1, True)


@pytest.mark.parametrize("bad, message", [
    (dict(k=1), "k: must be between 2 and 16"),
    (dict(k=17), "k: must be between 2 and 16"),
    (dict(max_new_tokens=0), "max_new_tokens: must be >= 1"),
    (dict(temperature=0.0), "temperature: must be > 0"),
    (dict(top_p=1.5), r"top_p: must be in \(0, 1\]"),
    (dict(batch_size=0), "batch_size: must be >= 1"),
    (dict(seed=-1), "seed: must be >= 0"),
    (dict(k=True), "k: must be an integer"),
])
def test_bad_sampling_params_are_refused_with_the_field_named(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**bad)


def test_bad_job_arguments_are_refused(ws):
    row, params = get_model(ws.db, "tiny"), SamplingParams(k=2, **FAST)
    with pytest.raises(ValueError, match="prompts: must be >= 1"):
        generate_candidates(ws.db, row, n_prompts=0, params=params)
    with pytest.raises(ValueError, match="required_reviewers: must be >= 1"):
        generate_candidates(ws.db, row, n_prompts=1, params=params, required_reviewers=0)
    add_model(ws.db, "rm", "reward", path=row.path)
    with pytest.raises(ValueError, match="'rm' is a reward model"):
        generate_candidates(ws.db, get_model(ws.db, "rm"), n_prompts=1, params=params)


def test_cli_generate_honours_prompts_and_stores_the_options(ws):
    runner = CliRunner()
    args = ["--policy", "tiny", "--prompts", "2", "--k", "3", "--max-new-tokens", "5", "--round", "1",
            "--seed", "11", "--batch-size", "3", "--temperature", "1.2", "--top-p", "0.9", "--split", "train",
            "--workspace", str(ws.root)]
    r = runner.invoke(generate_command, args)
    assert r.exit_code == 0, r.output
    assert "queued 2 comparisons (6 responses) for round 1" in r.output
    comps = rows(ws.db, "SELECT round, len(response_ids) FROM comparisons")
    assert comps == [(1, 3), (1, 3)]
    params = [json.loads(p) for (p,) in rows(ws.db, "SELECT params FROM responses")]
    assert {(p["temperature"], p["top_p"], p["max_new_tokens"]) for p in params} == {(1.2, 0.9, 5)}
    assert {s for (s,) in rows(ws.db, "SELECT seed FROM responses")} == {11, 12}  # 1 prompt per batch

    r = runner.invoke(generate_command, ["--policy", "tiny", "--prompts", "1", "--k", "2", "--max-new-tokens", "3",
                                         "--json", "--workspace", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["comparisons"] == 1  # progress bars go to stderr


def test_cli_takes_its_defaults_from_the_workspace_config(tmp_path, tiny_lm):
    cfg = Config(models=ModelsSection(policy="tiny"),
                 generation=GenerationSection(k=3, max_new_tokens=4, batch_size=6, seed=5))
    w = init_workspace(tmp_path / "w", cfg)
    add_prompts(w, 2)
    add_model(w.db, "tiny", "policy", path=str(tiny_lm))
    r = CliRunner().invoke(generate_command, ["--prompts", "5", "--workspace", str(w.root)])
    assert r.exit_code == 0, r.output
    assert rows(w.db, "SELECT count(*), min(len(response_ids)) FROM comparisons") == [(2, 3)]
    assert rows(w.db, "SELECT DISTINCT seed, params->>'max_new_tokens' FROM responses") == [(5, "4")]


def test_cli_bad_options_exit_1_and_change_nothing(ws):
    before = table_hash(ws.db)
    runner = CliRunner()
    r = runner.invoke(generate_command, ["--policy", "tiny", "--k", "1", "--workspace", str(ws.root)])
    assert r.exit_code == 1 and "k: must be between 2 and 16" in r.output
    r = runner.invoke(generate_command, ["--policy", "nope", "--workspace", str(ws.root)])
    assert r.exit_code == 1 and "no model named 'nope'" in r.output
    r = runner.invoke(generate_command, ["--policy", "tiny", "--prompts", "0", "--workspace", str(ws.root)])
    assert r.exit_code == 1 and "prompts: must be >= 1" in r.output
    assert table_hash(ws.db) == before


def test_cli_with_no_prompts_left_says_so(workspace, tiny_lm):
    add_model(workspace.db, "tiny", "policy", path=str(tiny_lm))
    r = CliRunner().invoke(generate_command, ["--policy", "tiny", "--workspace", str(workspace.root)])
    assert r.exit_code == 0, r.output
    assert "no prompts without a comparison" in r.output


def test_a_prompt_queued_by_another_job_while_sampling_is_not_queued_twice(ws, monkeypatch):
    import rl.sampling

    real = rl.sampling.sample_completions
    first = rows(ws.db, "SELECT id, messages FROM prompts ORDER BY id LIMIT 1")[0]

    def meanwhile(*args, **kwargs):
        out = real(*args, **kwargs)
        other = Batch(prompts=[Prompt("p", json.loads(first[1]))],
                      responses=[Response("a", "p", "x"), Response("b", "p", "y")],
                      comparisons=[Comparison("c", "p", ["a", "b"], source="other-job")])
        write(ws.db, lambda con: write_batch(con, other))
        return out

    monkeypatch.setattr(rl.sampling, "sample_completions", meanwhile)
    result = generate_candidates(ws.db, get_model(ws.db, "tiny"), n_prompts=3, params=SamplingParams(k=2, **FAST))
    assert (result.skipped, result.comparisons, result.responses) == (1, 2, 4)
    assert rows(ws.db, "SELECT source FROM comparisons WHERE prompt_id = ?", [first[0]]) == [("other-job",)]
    assert rows(ws.db, "SELECT count(*) FROM responses WHERE prompt_id = ?", [first[0]]) == [(2,)]


def test_a_policy_with_a_lora_adapter_samples(ws, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = get_model(ws.db, "tiny")
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base.path),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(str(tmp_path / "adapter"))
    add_model(ws.db, "tiny-lora", "policy", base=base.path, adapter_path=str(tmp_path / "adapter"),
              parent_id=base.id, round=1)
    result = generate_candidates(ws.db, get_model(ws.db, "tiny-lora"), n_prompts=1,
                                 params=SamplingParams(k=2, **FAST))
    assert result.comparisons == 1
    assert rows(ws.db, "SELECT DISTINCT model_name FROM responses") == [("tiny-lora",)]


def test_device_choice_cpu_float32_here_cuda_bf16_when_present(monkeypatch):
    import torch

    from training.device import pick_device, training_defaults

    if not torch.cuda.is_available():
        assert (pick_device().device, pick_device().dtype) == ("cpu", torch.float32)
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="device: unknown 'tpu'"):
        pick_device("tpu")
    for name, value in [("is_available", True), ("is_bf16_supported", True), ("device_count", 1),
                        ("current_device", 0), ("get_device_name", "Fake GPU")]:
        monkeypatch.setattr(torch.cuda, name, lambda *a, v=value, **k: v)
    choice = pick_device()
    assert (choice.device, choice.dtype, choice.bf16) == ("cuda:0", torch.bfloat16, True)
    big, small = training_defaults(None, n_params=2_000_000_000), training_defaults(None, n_params=10)
    assert (big.device, big.bf16, big.gradient_checkpointing) == ("cuda:0", True, True)  # checkpointing pays
    assert small.bf16 and not small.gradient_checkpointing  # a small model: recomputation only costs time
    assert pick_device("cpu").dtype == torch.float32
