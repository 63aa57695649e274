"""The loop's collapse check (rankloop.loop_eval.collapse): distinct-2 of a policy's held-out samples against round
0's, and the report's warning when a policy answers every prompt alike."""

from __future__ import annotations

import pytest

# What the gold loop's PPO at learning rate 1e-4 wrote on held-out HH prompts (docs/experiments.md): one template.
TEMPLATE = ["I'm sorry for any misunderstanding. I don't have personal experiences.",
            "I'm sorry for any misunderstanding, but as a text-based AI, I don't have personal experiences."]
VARIED = ["Start with a budget: list what comes in and what goes out each month, then cut the largest extra.",
          "Bake it at 180 degrees for forty minutes, until a skewer comes out clean.",
          "The capital of Australia is Canberra, chosen as a compromise between Sydney and Melbourne.",
          "Water the basil when the top of the soil is dry, and give it at least six hours of sun.",
          "A resume should fit on one page and lead with what you achieved, not with duties.",
          "Try the breathing pattern four in, hold seven, eight out, a few times before sleep."]


def test_distinct_bigrams_is_distinct_over_all_word_bigrams():
    from rankloop.loop_eval import distinct_bigrams

    # bigrams (a b) (b c) | (a b): 2 distinct of 3
    assert distinct_bigrams([["a b c"], ["a b"]]) == pytest.approx(2 / 3)
    assert distinct_bigrams([["one"], [""]]) is None  # no bigram at all: no figure, not 0


def test_a_template_policy_is_warned_and_a_varied_one_is_not():
    from rankloop.loop_eval import collapse
    from rankloop.loop_report import _collapse_lines

    base = [VARIED[i:i + 2] for i in range(0, 6, 2)]
    collapsed = [[TEMPLATE[i % 2], TEMPLATE[0]] for i in range(3)]
    c = collapse(collapsed, base, 0.5)
    assert c["warn"] and c["distinct2"] < 0.5 * c["distinct2_base"]
    assert f"{c['distinct2']:.3f}" in c["message"] and f"{c['distinct2_base']:.3f}" in c["message"]
    lines = _collapse_lines({"collapse": c})
    assert len(lines) == 2 and "WARNING: the policy may answer every prompt alike" in lines[1]

    fine = collapse([VARIED[1::2], VARIED[0::2]], base, 0.5)  # the same answers, other prompts: as diverse
    assert not fine["warn"] and "message" not in fine
    assert len(_collapse_lines({"collapse": fine})) == 1
    assert not collapse(collapsed, base, 0.0)["warn"]  # 0: never warn
