"""Unpaired labels (KTO) and supervised targets (SFT) from judgments, per reviewer or aggregated over reviewers.

KTO, per judgment: with a ranking of two or more groups, the top group's responses are desirable (True) and the
bottom group's undesirable (False); middle groups and an all-tied ranking give nothing. An "all bad" judgment
marks every response of the comparison undesirable. A skip gives nothing. With `PairFilter.edited_first` (on by
default) a non-blank edited answer is desirable too ("all bad" ones included; `response_id` None), unless its text
is a candidate's. Column `source`: "response" (a candidate's label) or "edit".
KTO, aggregated: per comparison and response, each counted judgment is one vote (True, False or no label); the
label is the strict majority of True against False, `agreement` its share of all votes. Each distinct edit once per
comparison, desirable, agreement 1.0 (only its authors saw it).

SFT, per judgment: the reviewer's edited answer (always, "all bad" included: that is where edits matter most), and
the top-ranked response when the top group is a single response and the judgment is not "all bad".
SFT, aggregated: each distinct edited answer once per comparison, and the response that more than half of the
comparison's counted judgments put alone at the top.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Literal

from store.feedback import Feedback, Judged
from store.pairs import PairFilter, left_out_judgments, prompt_fields

SftSource = Literal["edits", "top", "both"]
SFT_SOURCES = ("edits", "top", "both")


def _by_comparison(fb: Feedback) -> dict[int, list[Judged]]:
    out: dict[int, list[Judged]] = defaultdict(list)
    for j in fb.judgments:
        if j.use in ("ranking", "all_bad"):
            out[j.comparison_id].append(j)
    return out


def _kto_labels(fb: Feedback, j: Judged, left: Counter) -> dict[int, bool]:
    """response id -> label that one judgment gives."""
    if j.use == "all_bad":
        return dict.fromkeys(fb.comparisons[j.comparison_id].response_ids, False)
    if len(j.ranking) < 2:
        left["all_tied_rankings"] += 1
        return {}
    left["middle_responses"] += sum(len(g) for g in j.ranking[1:-1])
    return {**dict.fromkeys(j.ranking[0], True), **dict.fromkeys(j.ranking[-1], False)}


def _left(fb: Feedback) -> Counter:
    """What every kind of label counts as left out from the start: skips and flagged reviewers' judgments."""
    return Counter({k: v for k, v in left_out_judgments(fb).items() if k != "all_bad_judgments"})


def _kto_edits(fb: Feedback, f: PairFilter, judged: list[Judged], aggregate: bool,
               left: Counter) -> list[dict[str, Any]]:
    """Desirable rows for the edited answers of one comparison's judgments (see the module doc)."""
    if not f.edited_first:
        return []
    c = fb.comparisons[judged[0].comparison_id]
    texts: dict[str, list[Judged]] = defaultdict(list)
    for j in judged:
        if j.edit is None:
            continue
        if any(fb.responses[r].text.strip() == j.edit.strip() for r in c.response_ids):
            left["edit_same_as_candidate"] += 1
        elif not f.model_ok(fb, *c.response_ids):
            left["other_model"] += 1
        else:
            texts[j.edit if aggregate else str(j.id)].append(j)
    base = {**prompt_fields(fb, c), "response_id": None, "label": True, "source": "edit"}
    if not aggregate:
        return [{**base, "judgment_id": js[0].id, "reviewer": js[0].reviewer, "completion": js[0].edit}
                for js in texts.values()]
    return [{**base, "completion": js[0].edit, "agreement": 1.0, "n_reviewers": len(js),
             "reviewers": sorted({j.reviewer for j in js}), "judgment_ids": [j.id for j in js]}
            for js in texts.values()]


def kto_records(fb: Feedback, f: PairFilter, aggregate: bool) -> tuple[list[dict[str, Any]], Counter]:
    left = _left(fb)
    records: list[dict[str, Any]] = []
    for cid, judged in sorted(_by_comparison(fb).items()):
        c = fb.comparisons[cid]
        labels = [(j, _kto_labels(fb, j, left)) for j in judged]
        if not aggregate:
            for j, given in labels:
                for rid, label in given.items():
                    if not f.model_ok(fb, rid):
                        left["other_model"] += 1
                        continue
                    records.append({**prompt_fields(fb, c), "judgment_id": j.id, "reviewer": j.reviewer,
                                    "response_id": rid, "completion": fb.responses[rid].text, "label": label,
                                    "source": "response"})
            records += _kto_edits(fb, f, judged, aggregate, left)
            continue
        for rid in c.response_ids:
            votes = Counter(given.get(rid) for _, given in labels)
            if votes[True] == votes[False]:
                left["split_votes" if votes[True] else "unlabelled_responses"] += 1
                continue
            label = votes[True] > votes[False]
            agreement = votes[label] / len(labels)
            if not f.model_ok(fb, rid):
                left["other_model"] += 1
            elif not f.agreement_ok(agreement):
                left["below_min_agreement"] += 1
            else:
                records.append({
                    **prompt_fields(fb, c), "response_id": rid, "completion": fb.responses[rid].text,
                    "label": label, "agreement": agreement, "n_reviewers": len(labels),
                    "reviewers": sorted({j.reviewer for j, _ in labels}), "judgment_ids": [j.id for j, _ in labels],
                    "source": "response",
                })
        records += _kto_edits(fb, f, judged, aggregate, left)
    return records, left


def _single_top(j: Judged) -> int | None:
    if j.use != "ranking" or len(j.ranking[0]) != 1:
        return None
    return j.ranking[0][0]


def sft_records(fb: Feedback, f: PairFilter, aggregate: bool,
                source: SftSource = "both") -> tuple[list[dict[str, Any]], Counter]:
    if source not in SFT_SOURCES:
        raise ValueError(f"sft_source must be one of {', '.join(SFT_SOURCES)}, got {source!r}")
    left = _left(fb)
    records: list[dict[str, Any]] = []
    for cid, judged in sorted(_by_comparison(fb).items()):
        c = fb.comparisons[cid]
        base = prompt_fields(fb, c)
        if source in ("edits", "both"):
            edits = [j for j in judged if j.edit]
            if edits and not f.model_ok(fb, *c.response_ids):
                left["other_model"] += len(edits)
                edits = []
            if not aggregate:
                records += [{**base, "judgment_id": j.id, "reviewer": j.reviewer, "source": "edit",
                             "response_id": None, "completion": j.edited_text} for j in edits]
            else:
                texts: dict[str, list[Judged]] = defaultdict(list)
                for j in edits:
                    texts[j.edited_text].append(j)
                records += [{**base, "source": "edit", "response_id": None, "completion": text,
                             "agreement": None, "n_reviewers": len(js), "reviewers": sorted({j.reviewer for j in js}),
                             "judgment_ids": [j.id for j in js]} for text, js in texts.items()]
        if source not in ("top", "both"):
            continue
        left["all_bad_judgments"] += sum(j.use == "all_bad" for j in judged)
        tops = [(j, _single_top(j)) for j in judged]
        left["tied_tops"] += sum(j.use == "ranking" and top is None for j, top in tops)
        if not aggregate:
            for j, top in tops:
                if top is None:
                    continue
                if not f.model_ok(fb, top):
                    left["other_model"] += 1
                    continue
                records.append({**base, "judgment_id": j.id, "reviewer": j.reviewer, "source": "top",
                                "response_id": top, "completion": fb.responses[top].text})
            continue
        votes = Counter(top for _, top in tops if top is not None)
        winner, n = votes.most_common(1)[0] if votes else (None, 0)
        agreement = n / len(judged)
        if winner is None or 2 * n <= len(judged):
            left["no_majority_top"] += 1
        elif not f.model_ok(fb, winner):
            left["other_model"] += 1
        elif not f.agreement_ok(agreement):
            left["below_min_agreement"] += 1
        else:
            records.append({
                **base, "source": "top", "response_id": winner, "completion": fb.responses[winner].text,
                "agreement": agreement, "n_reviewers": len(judged), "reviewers": sorted({j.reviewer for j in judged}),
                "judgment_ids": [j.id for j in judged],
            })
    return records, left
