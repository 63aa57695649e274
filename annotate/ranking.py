"""The ranking a reviewer is building, as plain functions over {response id: rank or None}.

Keyboard model: the reviewer presses the candidates' numbers best first. The first press clears the default
order (candidates as shown); each press gives the next rank; when one candidate is left it takes the last rank.
T ties the next press with the previous one (with two candidates T ties both). Pressing a candidate again moves
it to the next rank.
"""

from __future__ import annotations

LETTERS = "ABCDEFGHIJKLMNOP"

Ranks = dict[int, int | None]


def default_ranks(order: list[int]) -> Ranks:
    """Ranks as shown: the first candidate best."""
    return {rid: pos for pos, rid in enumerate(order, start=1)}


def ranking_of(ranks: Ranks, order: list[int]) -> list[list[int]] | None:
    """Groups of response ids, best first (ties share a group, in display order); None while any is unranked."""
    if any(ranks.get(rid) is None for rid in order):
        return None
    values = sorted({ranks[rid] for rid in order})
    return [[rid for rid in order if ranks[rid] == v] for v in values]


def press(ranks: Ranks, order: list[int], index: int, *, fresh: bool, tie: bool, last: int) -> tuple[Ranks, int]:
    """The ranks after pressing candidate `index` (0-based in display order); returns (ranks, rank it got).

    `fresh`: the ranks are still the untouched default, so this press starts a new ranking.
    `tie`: give it the same rank as the previous press (`last`) instead of the next one.
    """
    rid = order[index]
    ranks = {r: None for r in order} if fresh else dict(ranks)
    ranks[rid] = None
    taken = [v for v in ranks.values() if v is not None]
    if tie and last and last in taken:
        ranks[rid] = last
    else:
        ranks[rid] = max(taken, default=0) + 1
    left = [r for r in order if ranks[r] is None]
    if len(left) == 1:
        ranks[left[0]] = max(v for v in ranks.values() if v is not None) + 1
    return ranks, ranks[rid]


def all_tied(order: list[int]) -> Ranks:
    return {rid: 1 for rid in order}


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
