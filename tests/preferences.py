"""Building judged comparisons for pair and export tests through `write_batch`, with readable keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from store.batch import Batch, Comparison, Judgment, Prompt, Response, write_batch
from store.db import write


@dataclass
class Seed:
    """Comparisons keyed by name, responses by "comparison/letter", rankings written with the letters."""

    batch: Batch = field(default_factory=Batch)
    letters: dict[str, list[str]] = field(default_factory=dict)

    def comparison(self, key: str, prompt: str | list[dict[str, str]], responses: dict[str, str], *,
                   models: dict[str, str] | None = None, round: int = 0, split: str = "train") -> Seed:
        if isinstance(prompt, str):
            messages, text = [{"role": "user", "content": prompt}], prompt
        else:
            messages, text = prompt, None
        self.batch.prompts.append(Prompt(key, messages, text=text, split=split))
        for letter, body in responses.items():
            self.batch.responses.append(
                Response(f"{key}/{letter}", key, body, model_name=(models or {}).get(letter))
            )
        self.batch.comparisons.append(Comparison(key, key, [f"{key}/{x}" for x in responses], round=round))
        self.letters[key] = list(responses)
        return self

    def judge(self, key: str, reviewer: str, ranking: str | None = None, **kw: Any) -> Seed:
        """`ranking` like "a>b=c>d": groups split by ">", ties joined by "="."""
        groups = None if ranking is None else [[f"{key}/{x}" for x in g.split("=")] for g in ranking.split(">")]
        n = len(self.batch.judgments)
        self.batch.judgments.append(Judgment(key, reviewer, f"{key}:{reviewer}:{n}", ranking=groups, **kw))
        return self

    def write(self, db: str | Path) -> Ids:
        result = write(db, lambda con: write_batch(con, self.batch))
        cids = dict(zip([c.key for c in self.batch.comparisons], result.comparison_ids, strict=True))
        rows = write(db, lambda con: con.execute("SELECT id, response_ids FROM comparisons").fetchall())
        by_cid = {cid: list(rids) for cid, rids in rows}
        rids = {f"{key}/{x}": by_cid[cid][i] for key, cid in cids.items() for i, x in enumerate(self.letters[key])}
        return Ids(cids, rids)


@dataclass
class Ids:
    comparisons: dict[str, int]
    responses: dict[str, int]

    def __call__(self, name: str) -> int:
        """Id of "key/letter" (a response) or "key" (a comparison)."""
        return self.responses[name] if "/" in name else self.comparisons[name]
