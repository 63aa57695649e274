"""The ranking a reviewer is building, as plain functions over {response id: rank or None}.

Two answers: the reviewer makes one choice, and the last press wins: 1 = A better, 2 = B better, T = tie,
X = both bad (see `choice_ranks` / `choice_of`).

K answers: a candidate's key ranks it next, after every candidate already ranked. A candidate that is already
ranked moves there too (so pressing it again sends it to the end of what is ranked); the ranks are closed up
after every press, so no candidate is ever left outside 1..K and none falls out of the ranking. When one
candidate is left unranked it takes the last rank. T ties the next press with the previous one. Ranks start
empty: nothing is ranked until the reviewer says so.
"""

from __future__ import annotations

LETTERS = "ABCDEFGHIJKLMNOP"
RULE = "A key ranks that answer next; press a ranked answer again to move it to the end."

Ranks = dict[int, int | None]
CHOICES = ("a", "b", "tie", "bad")
CHOICE_LABELS = {"a": "A better", "b": "B better", "tie": "Tie", "bad": "Both bad"}


def empty(order: list[int]) -> Ranks:
    return {rid: None for rid in order}


def compact(ranks: Ranks) -> Ranks:
    """The same order with ranks 1, 2, 3... and no gaps (tied candidates keep one shared rank)."""
    values = sorted({v for v in ranks.values() if v is not None})
    dense = {v: i for i, v in enumerate(values, start=1)}
    return {rid: None if v is None else dense[v] for rid, v in ranks.items()}


def ranking_of(ranks: Ranks, order: list[int]) -> list[list[int]] | None:
    """Groups of response ids, best first (ties share a group, in display order); None while any is unranked."""
    if any(ranks.get(rid) is None for rid in order):
        return None
    values = sorted({ranks[rid] for rid in order})
    return [[rid for rid in order if ranks[rid] == v] for v in values]


def press(ranks: Ranks, order: list[int], index: int, *, tie_with: int | None = None) -> Ranks:
    """The ranks after pressing candidate `index` (0-based in display order).

    `tie_with`: the response id of the previous press; when given (T was pressed) and still ranked, the pressed
    candidate shares its rank instead of taking the next one.
    """
    rid = order[index]
    ranks = dict(ranks)
    ranks[rid] = None
    ranks = compact(ranks)
    if tie_with is not None and tie_with != rid and ranks.get(tie_with) is not None:
        ranks[rid] = ranks[tie_with]
    else:
        ranks[rid] = max((v for v in ranks.values() if v is not None), default=0) + 1
    left = [r for r in order if ranks[r] is None]
    if len(left) == 1:
        ranks[left[0]] = max(v for v in ranks.values() if v is not None) + 1
    return ranks


def choice_ranks(choice: str, order: list[int]) -> Ranks:
    """Two answers: the ranks one choice stands for ('bad' ranks nothing: it is stored as all bad)."""
    a, b = order
    return {"a": {a: 1, b: 2}, "b": {a: 2, b: 1}, "tie": {a: 1, b: 1}, "bad": {a: None, b: None}}[choice]


def choice_of(ranks: Ranks, order: list[int], all_bad: bool) -> str | None:
    """Two answers: which choice the state shows, or None when none is made."""
    if all_bad:
        return "bad"
    ranking = ranking_of(ranks, order)
    if ranking is None:
        return None
    if len(ranking) == 1:
        return "tie"
    return "a" if ranking[0] == [order[0]] else "b"


def describe(ranking: list[list[int]] | None, order: list[int]) -> str:
    """'B > A = C' in the letters the reviewer sees."""
    if not ranking:
        return "not ranked yet"
    letter = {rid: LETTERS[i] for i, rid in enumerate(order)}
    return " > ".join(" = ".join(letter[r] for r in group) for group in ranking)


def describe_ranks(ranks: Ranks, order: list[int]) -> str:
    """The ranking so far: 'B > A = C', or 'B · not ranked yet: A, C' while some are unranked."""
    letter = {rid: LETTERS[i] for i, rid in enumerate(order)}
    values = sorted({v for v in ranks.values() if v is not None})
    done = " > ".join(" = ".join(letter[r] for r in order if ranks.get(r) == v) for v in values)
    left = [letter[r] for r in order if ranks.get(r) is None]
    if not left:
        return done
    return (done + " · " if done else "") + "not ranked yet: " + ", ".join(left)
