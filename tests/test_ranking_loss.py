"""reward/ranking_loss.py: the Davidson-Luce ranking loss (Plackett-Luce over ordered groups, ties chosen together).
Pure tensor arithmetic: no model, CPU, milliseconds."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from reward.ranking_loss import group_index, ranking_nll


def test_two_items_without_a_tie_is_bradley_terry():
    gen = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(64, generator=gen) * 3, torch.randn(64, generator=gen) * 3
    loss = ranking_nll(torch.stack([chosen, rejected], 1), torch.tensor([[0, 1]] * 64))
    assert torch.allclose(loss, -F.logsigmoid(chosen - rejected), atol=1e-6, rtol=1e-6)
    # the tie parameter plays no part in a ranking without ties
    assert torch.allclose(ranking_nll(torch.stack([chosen, rejected], 1), torch.tensor([[0, 1]] * 64), tie=5.0),
                          loss, atol=1e-6, rtol=1e-6)


def test_two_items_tied_is_davidson():
    s = torch.tensor([0.7, -0.2], dtype=torch.float64)
    a = s.exp()
    for tie in (0.5, 1.0, 2.0):
        davidson = tie * (a[0] * a[1]).sqrt() / (a[0] + a[1] + tie * (a[0] * a[1]).sqrt())
        assert ranking_nll(s, torch.tensor([0, 0]), tie=tie).item() == pytest.approx(-math.log(davidson), abs=1e-12)
    # at equal scores the default tie makes a tie as likely as either win: 1/3
    assert ranking_nll(torch.zeros(2), torch.tensor([0, 0])).item() == pytest.approx(math.log(3), abs=1e-6)


def test_three_items_with_a_tie_by_hand():
    # Ranking [[a], [b, c]] (a best, b and c tied), scores s = (ln 4, 0, 0), so worths a = (4, 1, 1); tie = 1; D = 2.
    # Stage 1, S = {a, b, c}, a chosen alone:
    #   denominator = singletons 4 + 1 + 1 = 6, plus tie * pairs sqrt(4*1) + sqrt(4*1) + sqrt(1*1) = 2 + 2 + 1 = 5
    #               = 11;  P = 4 / 11
    # Stage 2, S = {b, c}, chosen together: numerator tie * sqrt(1*1) = 1; denominator 1 + 1 + 1 = 3;  P = 1 / 3
    # NLL = -log(4/11) - log(1/3) = log(33/4)
    s = torch.tensor([math.log(4.0), 0.0, 0.0], dtype=torch.float64)
    assert ranking_nll(s, torch.tensor([0, 1, 1])).item() == pytest.approx(math.log(33 / 4), abs=1e-12)
    # The tie at the top instead, [[a, b], [c]]: stage 1 numerator sqrt(4*1) = 2 of 11; stage 2 is c alone (P = 1).
    assert ranking_nll(s, torch.tensor([0, 0, 1])).item() == pytest.approx(math.log(11 / 2), abs=1e-12)
    # tie = 2: stage 1 denominator 6 + 2*5 = 16, P = 4/16; stage 2: 2*1 / (1 + 1 + 2) = 1/2; NLL = log 8
    assert ranking_nll(s, torch.tensor([0, 1, 1]), tie=2.0).item() == pytest.approx(math.log(8), abs=1e-12)


def test_gradients_push_the_better_item_up_and_pull_tied_items_together():
    s = torch.tensor([0.0, 0.0, 0.0], requires_grad=True)
    ranking_nll(s, torch.tensor([0, 1, 2])).backward()
    assert s.grad[0] < 0 < s.grad[2]  # gradient descent raises the best, lowers the worst
    assert torch.isfinite(s.grad).all()

    tied = torch.tensor([2.0, -1.0, -3.0], requires_grad=True)
    ranking_nll(tied, torch.tensor([0, 0, 1])).backward()
    assert tied.grad[0] > 0 > tied.grad[1]  # descent moves the two tied scores towards each other
    assert tied.grad[2] > 0  # and the item below them down

    steps = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([steps], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        ranking_nll(steps, torch.tensor([0, 1, 1, 2])).backward()
        opt.step()
    assert steps[0] > steps[1] and steps[0] > steps[2] > steps[3] and steps[1] > steps[3]


def test_batched_with_padding_equals_one_at_a_time():
    gen = torch.Generator().manual_seed(1)
    rankings = [[0, 1], [0, 0], [0, 1, 1], [1, 0, 2, 0], [0, 1, 2, 3, 4], [2, 2, 0, 1, 1, 3], [0]]
    k = max(map(len, rankings))
    scores = torch.randn(len(rankings), k, generator=gen, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([r + [-1] * (k - len(r)) for r in rankings])
    batched = ranking_nll(scores, groups)
    one_by_one = torch.stack([ranking_nll(scores[i, :len(r)], torch.tensor(r)) for i, r in enumerate(rankings)])
    assert torch.allclose(batched, one_by_one, atol=1e-12)
    assert batched[-1].item() == 0.0  # a single item: nothing to learn
    # padding takes no gradient, whatever its score
    batched.sum().backward()
    assert (scores.grad[groups < 0] == 0).all()
    assert ranking_nll(scores, groups, reduction="mean").item() == pytest.approx(batched.mean().item())


def test_strict_ranking_is_plackett_luce_not_all_pairs():
    gen = torch.Generator().manual_seed(2)
    s = torch.randn(5, generator=gen, dtype=torch.float64)
    order = [3, 0, 4, 1, 2]  # best first
    groups = torch.empty(5, dtype=torch.long)
    groups[order] = torch.arange(5)
    plackett_luce = sum(-F.log_softmax(s[order[i:]], 0)[0] for i in range(5))
    loss = ranking_nll(s, groups, tie=3.0)  # tie is unused without ties
    assert loss.item() == pytest.approx(plackett_luce.item(), abs=1e-12)
    all_pairs = sum(-F.logsigmoid(s[a] - s[b]) for a, b in itertools.combinations(order, 2))
    assert abs(loss.item() - all_pairs.item()) > 0.1


def test_group_index_reads_the_store_ranking_json():
    ranking = [[12], [7, 30], [4]]  # response ids, best first; 7 and 30 tied
    assert group_index(ranking) == [0, 1, 1, 2]
    assert group_index(ranking, [4, 7, 12, 30]) == [2, 1, 0, 1]
    with pytest.raises(ValueError, match="not in the ranking"):
        group_index(ranking, [4, 99])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="without gaps"):
        ranking_nll(torch.zeros(3), torch.tensor([0, 2, 2]))
    with pytest.raises(ValueError, match="tie"):
        ranking_nll(torch.zeros(2), torch.tensor([0, 1]), tie=0.0)
    with pytest.raises(ValueError, match="shape"):
        ranking_nll(torch.zeros(3), torch.tensor([0, 1]))
