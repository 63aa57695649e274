"""PPO pieces against hand-computed values, and PPO on a toy reward with a tiny model (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

from rl.ppo import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    masked_whiten,
    ppo_losses,
    token_rewards,
)


def test_gae_matches_hand_computed_values():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 9.0]])  # the 9.0 sits on padding and must be ignored
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=1: delta = 1 - 0.2 = 0.8 (V after the end is 0); t=0: delta = 0.2 - 0.5 = -0.3, A = -0.3 + 0.5 * 0.8
    assert adv.tolist()[0] == pytest.approx([0.1, 0.8, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.6, 1.0, 0.0])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=0: delta = 0.9 * 0.2 - 0.5 = -0.32; A = -0.32 + 0.9 * 0.8 * 0.8 = 0.256
    assert adv.tolist()[0] == pytest.approx([0.256, 0.8, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.756, 1.0, 0.0])


def test_adaptive_kl_controller_matches_hand_computed_values():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert ctl.update(9.0, 256) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))  # error clipped at +0.2
    ctl = AdaptiveKLController(0.1, target=5.0, horizon=1000)
    assert ctl.update(5.5, 100) == pytest.approx(0.1 * (1 + 0.1 * 100 / 1000))  # error 0.1, not clipped
    assert ctl.update(1.0, 100) == pytest.approx(0.1 * 1.01 * (1 - 0.2 * 0.1))  # error -0.8, clipped at -0.2
    assert FixedKLController(0.3).update(100.0, 10) == 0.3


def test_token_rewards_put_the_score_on_the_last_real_token():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -3.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -0.5], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 2.05], [0.0, -1.1, 0.0]]))


def test_whitening_and_clipped_losses():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert w[0, :3].mean().item() == pytest.approx(0.0, abs=1e-6) and w[0, 3].item() == 0.0
    assert masked_whiten(x, mask, shift_mean=False)[0, :3].mean().item() == pytest.approx(2.0, abs=1e-5)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5: both outside [0.8, 1.2]
    adv = torch.tensor([[1.0, 1.0]])
    m = torch.ones(1, 2)
    pg, vf, stats = ppo_losses(new, old, adv, torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2),
                               torch.tensor([[1.0, 0.0]]), m, cliprange=0.2, cliprange_value=0.2)
    # ratio 1.5 with A > 0 is clipped to 1.2; ratio 0.5 keeps -0.5 (max of -0.5 and -0.8) -> mean(-1.2, -0.5)
    assert pg.item() == pytest.approx(-0.85)
    assert stats.clip_fraction == pytest.approx(0.5)
    # value 1.0 moved 1.0 from old 0 but is clipped to 0.2: max((1-1)^2, (0.2-1)^2) = 0.64 -> 0.5 * mean(0.64, 0)
    assert vf.item() == pytest.approx(0.16)


TOKEN = "e"


pytestmark = pytest.mark.usefixtures("one_thread")


def count_token(prompts, responses):
    """Toy reward: how often the chosen text appears in the response."""
    return [r.count(TOKEN) / 4 for r in responses]


def _loop(tiny_lm, checkpointing=False, **overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl.ppo_config import PPOTrainingConfig
    from rl.ppo_train import PPOLoop

    values = dict(policy="tiny", max_steps=30, rollout_batch_size=8, num_minibatches=2, ppo_epochs=2,
                  max_new_tokens=12, learning_rate=1e-2, lora=False, missing_eos_penalty=0.0, init_kl_coef=0.01,
                  target_kl=2.0, kl_horizon=200, report_to=[])
    values.update(overrides)
    cfg = PPOTrainingConfig(**values)
    prompts = [[{"role": "user", "content": f"Question {i}: say something"}] for i in range(8)]
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    return PPOLoop(cfg, model, AutoTokenizer.from_pretrained(tiny_lm), count_token, prompts,
                   checkpointing=checkpointing)


def test_whitening_over_two_processes_uses_the_whole_batchs_statistics():
    """Two processes (threads here, summing through a barrier as an all-reduce would) each whiten their half of a
    batch: every row comes out as whitening the whole batch in one process gives, not as whitening its own half."""
    import threading

    torch.manual_seed(0)
    x = torch.randn(4, 6) * torch.tensor([[1.0], [1.0], [5.0], [5.0]]) + torch.tensor([[0.0], [0.0], [3.0], [3.0]])
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    whole = masked_whiten(x, mask)
    barrier, box, out = threading.Barrier(2), [torch.zeros(2), torch.zeros(2)], {}

    def total_for(rank):
        def total(t):
            box[rank] = t
            barrier.wait()
            summed = box[0] + box[1]
            barrier.wait()  # both have read before either writes again
            return summed
        return total

    def process(rank):
        part = slice(2 * rank, 2 * rank + 2)
        out[rank] = masked_whiten(x[part], mask[part], total=total_for(rank))

    threads = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.allclose(torch.cat([out[0], out[1]]), whole, atol=1e-6)
    assert not torch.allclose(masked_whiten(x[:2], mask[:2]), whole[:2], atol=1e-2), "halves differ from the whole"


def test_ppo_raises_a_toy_reward_and_the_kl_controller_reacts(tiny_lm):
    loop = _loop(tiny_lm)
    history = loop.train()
    first = sum(r["score"] for r in history[:5]) / 5
    last = sum(r["score"] for r in history[-5:]) / 5
    assert last > first + 0.5, (first, last)
    assert history[0]["clip_fraction"] <= 0.5 and history[0]["kl"] == pytest.approx(0.0, abs=0.05)
    assert all(k in history[-1] for k in ("entropy", "value_loss", "clip_fraction", "sample_s", "score_s", "update_s"))
    row = history[-1]
    # the share is of the unrounded times; each time is kept to the millisecond, which moves a ratio of
    # tiny-model times (a few ms) by more than any fixed tolerance, so check it against the rounding's bounds
    s, rest = row["sample_s"], row["score_s"] + row["update_s"]
    low, high = max(s - 5e-4, 0) / (s + rest + 1.5e-3), (s + 5e-4) / max(s + rest - 1.5e-3, 1e-9)
    assert low - 1e-3 <= row["sample_share"] <= high + 1e-3 and 0 < row["sample_share"] < 1, row
    # KL rose past the 2-nat target, so the adaptive controller raised beta
    assert max(r["kl"] for r in history) > 2.0
    assert history[-1]["kl_coef"] > history[0]["kl_coef"]


def test_the_first_update_starts_from_ratio_one_with_lora(tiny_lm):
    """With LoRA (B = 0 at init) the policy equals the reference: KL 0 and no clipping on the first batch."""
    loop = _loop(tiny_lm, lora=True, max_steps=1, ppo_epochs=1, num_minibatches=1)
    row = loop.train_step()
    assert row["kl"] == pytest.approx(0.0, abs=1e-4)
    assert row["clip_fraction"] == 0.0
    trainable = [n for n, p in loop.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_a_checkpointed_update_trains_as_the_plain_one(tiny_lm):
    """With checkpointing each decoder layer of the update's forward is recomputed in backward (the policy stays in
    eval mode, the rollout is not checkpointed), and one iteration moves the weights exactly as without it."""
    settings = dict(lora=True, max_steps=1, ppo_epochs=2, num_minibatches=2, learning_rate=1e-2)
    plain = _loop(tiny_lm, **settings)
    plain_row = plain.train_step()
    ckpt = _loop(tiny_lm, checkpointing=True, **settings)
    assert ckpt.checkpointed and len(ckpt.checkpointed) == ckpt.model.config.num_hidden_layers
    calls = []
    for layer in ckpt.checkpointed:
        layer._gradient_checkpointing_func = (lambda f: lambda *a, **k: calls.append(1) or f(*a, **k))(
            layer._gradient_checkpointing_func)
    row = ckpt.train_step()
    # every layer once per minibatch update (2 epochs x 2 minibatches); none in the no-grad rollout and scoring
    assert len(calls) == len(ckpt.checkpointed) * 4
    assert not ckpt.model.training and not any(layer.training for layer in ckpt.checkpointed)
    assert row["kl"] == pytest.approx(0.0, abs=1e-4) and row["policy_loss"] == pytest.approx(plain_row["policy_loss"],
                                                                                               abs=1e-5)
    moved = 0
    for (name, a), (_, b) in zip(plain.model.named_parameters(), ckpt.model.named_parameters(), strict=True):
        if a.requires_grad:
            assert torch.allclose(a, b, atol=1e-5), name
            moved += bool((a != 0).any()) if "lora_B" in name else 0
    assert moved, "LoRA's B matrices (zero at start) moved"
    assert torch.allclose(plain.value_head.summary.weight, ckpt.value_head.summary.weight, atol=1e-5)
