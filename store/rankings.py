"""Rankings as training rows: one row per counted judgment's ranking, for a reward loss over the whole ranking
(`reward.ranking_loss.ranking_nll`) instead of its expansion into independent pairs (`store.pairs`).

A row: the prompt (`store.pairs.prompt_fields`), the judgment and reviewer, and three lists of one length, best
group first: `response_ids`, `responses` (texts) and `groups` (each item's group index, 0 = best, tied items share
one; the store's ranking JSON as `reward.ranking_loss.group_index` reads it).

- Only judgments that count and give a ranking (`store.feedback.Judged.use == "ranking"`), as for pairs, and
  "all bad" ones with an edit (below).
- Edited answer (`PairFilter.edited_first`, on by default; as in `store.pairs`): a counted judgment's non-blank
  edit (`Judged.edit`) is one more item, id `EDITED_ID`, alone in its own top group, so every candidate of the
  judgment ranks below it. An "all bad" judgment with an edit gives a row too: the edit, then every candidate of
  the comparison in one tied group (all equally bad); without an edit it gives none. An edit whose text is one of
  the candidates' gets no item of its own (counted as `edit_same_as_candidate`).
- Filters (`store.pairs.PairFilter`): round, split and reviewer choose the judgments read (`read_scoped`); `model`
  keeps a ranking when any of its candidates was written by one of the models; `min_agreement` keeps a ranking
  whose pairs agree, on average, at least that much with the comparison's other rankings (each pair's agreement as
  in `store.pairs.per_reviewer_records`, an edit's pairs 1.0); a ranking without any untied pair has no
  agreement and is left out then.
- A ranking with fewer than two items teaches nothing and is left out (counted).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from store.feedback import Feedback
from store.pairs import (
    PairFilter,
    edits_by_comparison,
    left_out_judgments,
    prompt_fields,
    ranking_pairs,
    rankings_by_comparison,
    read_scoped,
)

EDITED_ID = -1  # the response id an edited answer takes in a ranking row (it is no response of the comparison)

RANKING_COLUMNS = [
    "comparison_id", "judgment_id", "reviewer", "round", "split", "prompt_id", "prompt_text", "prompt_messages",
    "response_ids", "responses", "groups", "edited", "agreement",
]


def _ranks(ranking: list[list[int]]) -> dict[int, int]:
    return {rid: pos for pos, group in enumerate(ranking) for rid in group}


def ranking_records(fb: Feedback, f: PairFilter) -> tuple[list[dict[str, Any]], Counter]:
    """One record per counted ranking that passes the filters (see the module doc), and what was left out."""
    edited_first = bool(getattr(f, "edited_first", True))
    left = left_out_judgments(fb, edits=edited_first)
    rankings = rankings_by_comparison(fb)
    edits = edits_by_comparison(fb) if edited_first else {}
    records: list[dict[str, Any]] = []
    for cid in sorted(set(rankings) | set(edits)):
        c, judged = fb.comparisons[cid], rankings.get(cid, [])
        ranks = [_ranks(j.ranking) for j in judged]
        all_bad = [j for j in edits.get(cid, []) if j.use == "all_bad"]
        for j in sorted(judged + all_bad, key=lambda j: j.id):
            edit = j.edit if edited_first else None
            if edit and any(fb.responses[r].text.strip() == edit.strip() for r in c.response_ids):
                left["edit_same_as_candidate"] += 1  # the edit is one of the candidates: no item of its own
                edit = None
            ranking = j.ranking if j.use == "ranking" else [list(c.response_ids)]  # "all bad": all equally bad
            if j.use != "ranking" and edit is None:
                continue
            ids: list[int] = [EDITED_ID] if edit else []
            texts: list[str] = [edit] if edit else []
            groups: list[int] = [0] if edit else []
            for g, group in enumerate(ranking):
                for rid in group:
                    ids.append(rid)
                    texts.append(fb.responses[rid].text)
                    groups.append(g + (1 if edit else 0))
            candidates = [r for r in ids if r != EDITED_ID]
            agreements = [1.0] * len(candidates) if edit else []  # an edit pair's agreement, as in store.pairs
            for better, worse, _ in ranking_pairs(ranking) if j.use == "ranking" else []:
                voters = [r for r in ranks if better in r and worse in r]
                agreements.append(sum(r[better] < r[worse] for r in voters) / len(voters))
            agreement = sum(agreements) / len(agreements) if agreements else None
            if len(ids) < 2:
                left["single_item_rankings"] += 1
            elif not f.model_ok(fb, *candidates):
                left["other_model"] += 1
            elif f.min_agreement is not None and (agreement is None or not f.agreement_ok(agreement)):
                left["below_min_agreement"] += 1
            else:
                records.append({
                    **prompt_fields(fb, c), "judgment_id": j.id, "reviewer": j.reviewer, "response_ids": ids,
                    "responses": texts, "groups": groups, "edited": edit is not None, "agreement": agreement,
                })
    return records, left


def rankings_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=RANKING_COLUMNS)
    # as store.pairs._frame: a prompt without original text stays None (pandas 3 would make it NaN)
    frame["prompt_text"] = pd.Series([r["prompt_text"] for r in records], dtype=object, index=frame.index)
    return frame


def preference_rankings(db: str | Path, filters: PairFilter | None = None) -> pd.DataFrame:
    """One row per counted ranking (see the module doc)."""
    f = filters or PairFilter()
    records, _ = ranking_records(read_scoped(db, f), f)
    return rankings_frame(records)


def expand_pairs(rankings: pd.DataFrame) -> pd.DataFrame:
    """Each ranking row's (better, worse) pairs across its groups: chosen/rejected ids and texts, margin = the
    group gap. What pairwise accuracy on ranking rows is measured on."""
    rows = []
    for row in rankings.itertuples(index=False):
        ids, texts, groups = list(row.response_ids), list(row.responses), [int(g) for g in row.groups]
        for a in range(len(ids)):
            for b in range(len(ids)):
                if groups[a] < groups[b]:
                    rows.append({"comparison_id": row.comparison_id, "judgment_id": row.judgment_id,
                                 "prompt_id": row.prompt_id, "chosen_id": int(ids[a]), "rejected_id": int(ids[b]),
                                 "chosen": texts[a], "rejected": texts[b], "margin": groups[b] - groups[a]})
    return pd.DataFrame(rows, columns=["comparison_id", "judgment_id", "prompt_id", "chosen_id", "rejected_id",
                                       "chosen", "rejected", "margin"])
