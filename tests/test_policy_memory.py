"""What keeps the policy trainers (DPO, SFT, KTO) small on a CPU: TRL's fused LM head with small tiles, scoring only
the labelled positions (training/hf.py `lean_lm_head`), gives TRL's log-probs and gradients; gradient checkpointing
is chosen from the size of a batch's activations (training/device.py)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lean_lm_head_gives_trls_log_probs_and_gradients_with_small_tiles(tiny_lm, monkeypatch):
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as utils
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from training.hf import CPU_HEAD_TOKENS, CPU_HEAD_VOCAB, lean_lm_head

    # TRL as shipped (an earlier test's run may have made it lean already), put back after the test
    monkeypatch.setattr(kernel, "TOKEN_CHUNK_SIZE", 4096)
    monkeypatch.setattr(utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)
    monkeypatch.setattr(utils, "_use_triton", getattr(utils._use_triton, "trl", utils._use_triton))
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 40))
    mask = torch.ones_like(ids)
    mask[2, 30:] = 0  # padding
    labels = ids.masked_fill(torch.arange(40) < 25, -100).masked_fill(mask == 0, -100)  # the prompt: no label
    scored: list[int] = []
    real_apply = kernel.ChunkedLogProbFunction.apply

    def counting(hidden, *args):
        scored.append(hidden.shape[0])
        return real_apply(hidden, *args)

    monkeypatch.setattr(utils._ChunkedLogProbFunction, "apply", counting)

    def run():
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        (out.log_probs.sum() + out.entropy.sum()).backward()
        return out, [p.grad.clone() for p in model.parameters()]

    trl_out, trl_grads = run()
    assert lean_lm_head("cuda:0") is False and scored == [3 * 39]  # TRL on a CPU: every position scored
    assert lean_lm_head("cpu") is True and lean_lm_head("cpu") is True  # twice: wrapped once
    assert (kernel.TOKEN_CHUNK_SIZE, utils._CHUNKED_LOGPROB_CHUNK_SIZE) == (CPU_HEAD_TOKENS, CPU_HEAD_VOCAB)
    monkeypatch.setattr(kernel, "TOKEN_CHUNK_SIZE", 7)  # tiles smaller than the batch and the vocabulary
    monkeypatch.setattr(utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 33)
    lean_out, lean_grads = run()
    assert scored[1] == int((labels[:, 1:] != -100).sum()) < 3 * 39  # only the labelled positions
    for field in ("log_probs", "entropy", "mean_logits"):
        assert torch.allclose(getattr(trl_out, field), getattr(lean_out, field), atol=1e-5)
    assert torch.equal(trl_out.is_top1, lean_out.is_top1)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(trl_grads, lean_grads, strict=True))


def test_checkpointing_follows_the_size_of_a_batchs_activations():
    from transformers import AutoConfig

    from rl.config import DPOTrainingConfig, SFTTrainingConfig
    from training.device import activation_values, device_memory, training_defaults

    smollm = AutoConfig.for_model("llama", num_hidden_layers=30, hidden_size=576, intermediate_size=1536)
    dpo = DPOTrainingConfig(per_device_train_batch_size=8, max_length=512)
    assert dpo.batch_positions == 8192 and SFTTrainingConfig(max_length=512).batch_positions == 4096
    values = activation_values(smollm, dpo.batch_positions)
    assert values == 8192 * 30 * (8 * 576 + 4 * 1536)  # ~9.8 GiB in float32
    memory = device_memory("cpu")
    big = training_defaults("cpu", 134_000_000, activations=memory // 4)  # all of memory in float32
    assert big.gradient_checkpointing and "GiB of activations" in big.reasons["gradient_checkpointing"]
    small = training_defaults("cpu", 134_000_000, activations=memory // 64)  # 1/16 of it
    assert not small.gradient_checkpointing and "40%" in small.reasons["gradient_checkpointing"]
    forced = training_defaults("cpu", 134_000_000, gradient_checkpointing=False, activations=memory)
    assert not forced.gradient_checkpointing and forced.reasons["gradient_checkpointing"] == "set in the config"
    assert activation_values(AutoConfig.for_model("bert"), 100) > 0 and activation_values(object(), 100) == 0


def test_sft_settings_reach_trl(tmp_path):
    from rl.config import SFTTrainingConfig
    from rl.sft import sft_args
    from training.device import training_defaults

    dev = training_defaults("cpu", 10_000, gradient_checkpointing=True)
    args = sft_args(SFTTrainingConfig(early_stopping_patience=2), tmp_path, dev, True, False)
    assert args.completion_only_loss and not args.packing and args.metric_for_best_model == "eval_loss"
    assert args.activation_checkpointing and args.use_cpu and not args.bf16


def test_rankloop_command_turns_on_torchs_huge_page_allocation_before_torch_allocates():
    """`rankloop` sets THP_MEM_ALLOC_ENABLE before any command loads torch (torch reads it once, at its first CPU
    allocation): a large tensor of that process then comes from torch's page-aligned, huge-page path, which took a
    DPO step's peak from 8.8 GB to 2.4 GB (training/device.py). A user's THP_MEM_ALLOC_ENABLE=0 is kept."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists():
        pytest.skip("this kernel has no transparent huge pages")
    probe = ("import os, rankloop.cli, torch; t = torch.empty(1 << 22); "
             "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), t.data_ptr() % os.sysconf('SC_PAGE_SIZE'))")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    on = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert on.stdout.split() == ["1", "0"], on.stdout + on.stderr[-2000:]
    off = subprocess.run([sys.executable, "-c", "import os, rankloop.cli; print(os.environ['THP_MEM_ALLOC_ENABLE'])"],
                         env={**env, "THP_MEM_ALLOC_ENABLE": "0"}, capture_output=True, text=True, check=True)
    assert off.stdout.split() == ["0"], off.stdout + off.stderr[-2000:]
