"""PPO scores response tokens without full-vocabulary logits (rl.ppo.score_tokens: the body's hidden states, then
TRL's chunked kernel over the LM head): the same log-probs, entropy and gradients as the full (B, T, V) path."""

from __future__ import annotations

import pytest
import torch

from rl.ppo import ValueHead, logprobs_of, score_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(vocab: int, width: int = 5, T: int = 7, B: int = 3):
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(4, vocab, (B, width + T), generator=g)
    attn = torch.ones(B, width + T, dtype=torch.long)
    attn[0, :2] = 0  # left padding in the prompt
    mask = torch.ones(B, T)
    mask[1, 4:] = 0  # a response that ended early
    attn[:, width:] = mask.long()
    return seqs, attn, width, seqs[:, width:], mask


def _full(model, seqs, attn, width, tokens, mask, value_head):
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=seqs, attention_mask=attn, position_ids=pos, output_hidden_states=True)
    logp, entropy = logprobs_of(out.logits[:, width - 1:-1], tokens, temperature=0.7)
    hidden = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    body = hidden(input_ids=seqs, attention_mask=attn, position_ids=pos).last_hidden_state[:, width - 1:-1]
    return logp * mask, entropy * mask, value_head(body)


@pytest.mark.parametrize("lora", [False, True])
def test_chunked_scores_and_gradients_equal_the_full_logits(tiny_lm, monkeypatch, lora):
    from transformers import AutoModelForCausalLM


    monkeypatch.setattr("training.hf.CPU_HEAD_VOCAB", 64)  # several vocabulary tiles on the tiny vocabulary
    monkeypatch.setattr("trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE", 5)  # and several position tiles
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).float()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    value_head = ValueHead(model.config.hidden_size)
    torch.nn.init.normal_(value_head.summary.weight, std=0.1)
    batch = _batch(model.config.vocab_size)
    w = torch.randn(batch[3].shape, generator=torch.Generator().manual_seed(1))

    def run(fn):
        model.zero_grad(set_to_none=True)
        value_head.zero_grad(set_to_none=True)
        logp, entropy, values = fn()
        ((logp * w).sum() + entropy.sum() + (values * batch[4]).sum()).backward()
        grads = {n: p.grad.clone() for n, p in [*model.named_parameters(), *value_head.named_parameters()]
                 if p.grad is not None}
        return logp.detach(), entropy.detach(), values.detach(), grads

    full = run(lambda: _full(model, *batch, value_head))
    chunked = run(lambda: score_tokens(model, *batch, 0.7, value_head, with_entropy=True))
    for a, b in zip(full[:3], chunked[:3], strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert chunked[0][1, 4:].abs().sum() == 0 and chunked[0][1, :4].abs().min() > 0  # padding scores 0
    assert full[3].keys() == chunked[3].keys() and len(full[3]) > 2
    assert any("lora_" in n for n in chunked[3]) == lora
    for name, grad in full[3].items():
        torch.testing.assert_close(chunked[3][name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert sum(g.abs().sum() for g in full[3].values()) > 0


def test_a_policy_that_transforms_its_logits_is_refused_by_name(tiny_lm):
    """Soft-capped or scaled logits (Gemma-2, Cohere, Granite) would be scored wrongly by the chunked kernel."""
    from transformers import AutoModelForCausalLM

    from rl.ppo import backbone_and_head

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    backbone_and_head(model)  # a plain Llama head is fine
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        backbone_and_head(model)
