"""Every export loads with `datasets.load_dataset`, and TRL's RewardTrainer and DPOTrainer take a step on the pairs."""

import pytest

from store.export import export
from tests.preferences import Seed

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

CHAT = [{"role": "user", "content": "Write a haiku about the sea."}]


@pytest.fixture
def exported(workspace, tmp_path):
    """Every kind and style, as .jsonl and .parquet: {(kind, style, suffix): path}."""
    seed = Seed()
    seed.comparison("c1", "The capital of France is", {"a": " Paris.", "b": " Lyon.", "c": " a b c"})
    seed.judge("c1", "ana", "a>b>c", edited_text=" Paris, of course.").judge("c1", "bo", "a>c=b")
    seed.comparison("c2", CHAT, {"a": "one two three", "b": "sea sea sea", "c": "no"})
    seed.judge("c2", "ana", "b>a=c").judge("c2", "bo", all_bad=True, edited_text="The sea is wide.")
    seed.write(workspace.db)
    paths = {}
    combos = [("pairs", s) for s in ("standard", "conversational", "implicit", "implicit-conversational")]
    combos += [("kto", "standard"), ("kto", "conversational"), ("sft", "standard"), ("sft", "conversational"),
               ("sft", "implicit")]
    for kind, style in combos:
        for suffix in (".jsonl", ".parquet"):
            path = tmp_path / f"{kind}-{style}{suffix}"
            export(workspace.db, kind, path, style=style)
            paths[kind, style, suffix] = path
    return paths


def _load(path, cache):
    fmt = "json" if path.suffix == ".jsonl" else "parquet"
    return datasets.load_dataset(fmt, data_files=str(path), split="train", cache_dir=str(cache))


@pytest.mark.both_backends  # the trainers below read the files only: DuckDB alone
def test_every_export_loads_with_datasets(exported, tmp_path):
    expected = {"pairs": {"prompt", "chosen", "rejected", "margin"}, "kto": {"prompt", "completion", "label"},
                "sft": {"prompt", "completion"}}
    for (kind, style, _), path in exported.items():
        ds = _load(path, tmp_path / "cache")
        assert len(ds) > 0, path
        cols = set(ds.column_names)
        if style.startswith("implicit"):
            assert cols == ({"chosen", "rejected", "margin"} if kind == "pairs" else {"text"}), path
        elif kind == "sft" and style == "conversational":
            assert cols == {"messages"}
        else:
            assert cols == expected[kind], path
        if style == "conversational":
            key = "messages" if kind == "sft" else "prompt"
            assert isinstance(ds[0][key], list) and set(ds[0][key][0]) == {"role", "content"}
    assert set(_load(exported["kto", "standard", ".parquet"], tmp_path / "cache")["label"]) == {True, False}


def _config(cls, tmp_path, **kw):
    # TRL defaults gradient_checkpointing=True; transformers 5.24 renamed it activation_checkpointing and warns on the
    # old name, so the new one turns it off without a FutureWarning.
    return cls(output_dir=str(tmp_path / "out"), bf16=False, use_cpu=True, report_to=[], max_steps=1,
               per_device_train_batch_size=2, activation_checkpointing=False, logging_steps=1, save_strategy="no",
               learning_rate=1e-2, **kw)


def _changed(before, model):
    return any(not (before[n] == p.detach()).all() for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("style,suffix", [("standard", ".jsonl"), ("conversational", ".parquet")])
def test_reward_trainer_takes_a_step_on_the_pairs(exported, tiny_lm, tmp_path, style, suffix):
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    model = LlamaForSequenceClassification.from_pretrained(tiny_lm, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds = _load(exported["pairs", style, suffix], tmp_path / "cache")
    assert "margin" in ds.column_names
    trainer = trl.RewardTrainer(model=model, args=_config(trl.RewardConfig, tmp_path), train_dataset=ds,
                                processing_class=tok)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 1 and losses[0] > 0
    assert _changed(before, model)


@pytest.mark.parametrize("style,suffix", [("standard", ".jsonl"), ("conversational", ".parquet"),
                                          ("implicit", ".jsonl")])
def test_dpo_trainer_takes_a_step_on_the_pairs(exported, tiny_lm, tmp_path, style, suffix):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds = _load(exported["pairs", style, suffix], tmp_path / "cache")
    trainer = trl.DPOTrainer(model=model, args=_config(trl.DPOConfig, tmp_path), train_dataset=ds,
                             processing_class=tok)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 1 and losses[0] > 0
    assert _changed(before, model)
