"""The ranking model behind the keys (annotate.ranking): one meaning per key, whatever was pressed before."""

import itertools

from annotate import ranking as rk

ORDER = [11, 12, 13, 14]


def _after(presses, order=ORDER):
    ranks = rk.empty(order)
    for i in presses:
        ranks = rk.press(ranks, order, i)
    return ranks


def test_keys_rank_next_and_the_last_one_takes_the_last_rank():
    assert rk.describe_ranks(_after([1]), ORDER) == "B · not ranked yet: A, C, D"
    assert rk.describe_ranks(_after([1, 3]), ORDER) == "B > D · not ranked yet: A, C"
    assert rk.describe_ranks(_after([1, 3, 0]), ORDER) == "B > D > A > C"  # C is left: it takes rank 4


def test_pressing_a_ranked_answer_moves_it_to_the_end():
    full = _after([0, 1, 2])  # A > B > C > D
    assert rk.describe_ranks(full, ORDER) == "A > B > C > D"
    once = rk.press(full, ORDER, 1)
    assert rk.describe_ranks(once, ORDER) == "A > C > D > B"
    twice = rk.press(once, ORDER, 1)  # pressed again: still complete, never stuck or out of range
    assert rk.describe_ranks(twice, ORDER) == "A > C > D > B"
    partial = rk.press(_after([0, 1]), ORDER, 0)  # A, B ranked, A again: B first, A next, C and D open
    assert rk.describe_ranks(partial, ORDER) == "B > A · not ranked yet: C, D"


def test_no_sequence_of_keys_leaves_a_rank_outside_1_to_k():
    """Every sequence of up to five presses on four answers: ranks stay within 1..K with no gap, and once all are
    ranked, every later press keeps them all ranked."""
    for n in range(1, 6):
        for presses in itertools.product(range(4), repeat=n):
            ranks = rk.empty(ORDER)
            complete = False
            for i in presses:
                ranks = rk.press(ranks, ORDER, i)
                values = sorted({v for v in ranks.values() if v is not None})
                assert values == list(range(1, len(values) + 1)), (presses, ranks)
                assert all(v is None or 1 <= v <= 4 for v in ranks.values())
                if complete:
                    assert rk.ranking_of(ranks, ORDER) is not None, (presses, ranks)
                complete = rk.ranking_of(ranks, ORDER) is not None


def test_tie_with_the_previous_press():
    ranks = rk.press(rk.empty(ORDER), ORDER, 2)  # C
    ranks = rk.press(ranks, ORDER, 0, tie_with=ORDER[2])  # T, then A: A = C
    assert rk.describe_ranks(ranks, ORDER) == "A = C · not ranked yet: B, D"
    ranks = rk.press(ranks, ORDER, 3)
    assert rk.ranking_of(ranks, ORDER) == [[11, 13], [14], [12]]


def test_two_answers_the_last_choice_wins():
    two = [7, 8]
    for choice, ranking in [("a", [[7], [8]]), ("b", [[8], [7]]), ("tie", [[7, 8]])]:
        ranks = rk.choice_ranks(choice, two)
        assert rk.ranking_of(ranks, two) == ranking and rk.choice_of(ranks, two, False) == choice
    assert rk.choice_of(rk.choice_ranks("bad", two), two, True) == "bad"
    assert rk.choice_of(rk.empty(two), two, False) is None


def test_the_key_list_from_the_browser_applies_each_key_once():
    """annotate.keys: what the component sends is read defensively, and only keys after the last one applied are
    new, whatever order re-sent and older lists arrive in."""
    from annotate import keys

    def msg(ks, seq, stream="s1", lease=7):
        return keys.parse({"keys": {"lease": lease, "stream": stream, "keys": ks, "seq": seq}})

    applied = {}
    first = msg(["1", "2"], 2)
    assert keys.new_keys(first, applied) == ["1", "2"]
    applied = keys.mark_applied(first, applied)
    assert keys.new_keys(msg(["1", "2"], 3), applied) == []  # re-sent
    assert keys.new_keys(msg(["1"], 1), applied) == []  # older, late
    later = msg(["1", "2", "3", "Enter"], 4)
    assert keys.new_keys(later, applied) == ["3", "Enter"]
    applied = keys.mark_applied(later, applied)
    assert keys.mark_applied(msg(["1"], 1), applied) == {"s1": 4}  # an older list never lowers the count
    assert keys.new_keys(msg(["1"], 1, stream="s2"), applied) == ["1"]  # another page's list counts on its own
    for n in range(6):
        applied = keys.mark_applied(msg(["1"], 1, stream=f"t{n}"), applied)
    assert len(applied) == 4 and "s1" not in applied  # a lease remembers its last four lists
    for bad in (None, {}, {"keys": None}, {"keys": {"lease": "7", "stream": "s", "keys": [], "seq": 1}},
                {"keys": {"lease": 7, "stream": "", "keys": [], "seq": 1}},
                {"keys": {"lease": 7, "stream": "s", "keys": "1234", "seq": 1}},
                {"keys": {"lease": 7, "stream": "s", "keys": [1, 2], "seq": 1}},
                {"keys": {"lease": True, "stream": "s", "keys": [], "seq": 1}}):
        assert keys.parse(bad) is None, bad
    assert keys.parse({"keys": {"lease": None, "stream": "s", "keys": ["U"], "seq": 1}}).lease is None
    assert keys.clean_applied({"s": 3, "t": -1, "u": "2", 5: 1}) == {"s": 3} and keys.clean_applied([1]) == {}
