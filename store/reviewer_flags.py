"""Flagged reviewers: those whose gold accuracy (`store.agreement.gold_accuracy`) is under the workspace setting
`reviewer_flag_below` (store/settings.py; 0 turns flagging off), once they have answered at least `MIN_GOLD_ITEMS`
gold items, so that one miss among the first few does not flag anyone.

The agreement page shows the flags; training and exports leave flagged reviewers' judgments out when asked
(`store.pairs.PairFilter.exclude_flagged`, the data-selection setting `exclude_flagged`), and record the names.
"""

from __future__ import annotations

from pathlib import Path

from store.agreement import gold_accuracy
from store.settings import get_settings

MIN_GOLD_ITEMS = 5  # gold items a reviewer must have answered before a flag can be raised


def flag_threshold(db: str | Path) -> float | None:
    """The gold accuracy under which a reviewer is flagged; None when flagging is off (setting 0)."""
    below = get_settings(db)["reviewer_flag_below"]
    return float(below) if below else None


def flagged_among(accuracy: dict[str, dict[str, float]], below: float | None,
                  min_gold_items: int = MIN_GOLD_ITEMS) -> dict[str, float]:
    """name -> gold accuracy of those in `accuracy` (`gold_accuracy`'s shape) flagged under `below`."""
    if not below:
        return {}
    return {name: a["gold_accuracy"] for name, a in sorted(accuracy.items())
            if a["gold_items"] >= min_gold_items and a["gold_accuracy"] < below}


def flagged_reviewers(db: str | Path, min_gold_items: int = MIN_GOLD_ITEMS) -> dict[str, float]:
    """name -> gold accuracy (0..1) of every reviewer flagged now, by name; empty when flagging is off."""
    below = flag_threshold(db)
    return flagged_among(gold_accuracy(db), below, min_gold_items) if below else {}
