"""Oracles: what simulated reviewers believe is better. An oracle scores (prompt, response) pairs; higher is better.

Ways to name one (`rankloop simulate --oracle SPEC`, `rankloop loop --simulate SPEC`):

- a short name of a built-in reward function: `length-in-range`, `has-a-numbered-list`, `avoids-words`;
- a Python reward function by import path, `module:function`, called as `function(prompt, response) -> float`
  (`prompt` is the text of the last user turn);
- `model:NAME`, a reward model of the workspace (reward.score.RewardScorer);
- `reward:PATH`, a reward-model folder from anywhere (a probe or a fine-tuned model, e.g. one trained in another
  workspace on data the loop never sees: the "gold" reward model of scripts/loop_gold), scored the same way;
- a labelled pairs file, `pairs:PATH` or any path ending in `.jsonl` / `.jsonl.gz`: JSON Lines of
  `{prompt, chosen, rejected}` (prompt: text or chat messages). A response scores its wins minus its losses in
  the file for its prompt; responses the file does not know score 0.

A bad spec fails at once with a message that names it (and the file, line and field for a pairs file).
"""

from __future__ import annotations

import importlib
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]

# Built-in reward functions. Each takes the prompt text and the response text and returns a float.
LENGTH_RANGE_WORDS = (10, 30)
NUMBERED_LINE = re.compile(r"^\s*\d{1,2}[.)]\s+\S", re.M)
AVOIDED_WORDS = ("sorry", "unfortunately", "cannot", "however", "certainly", "language model", "as an ai")


def length_in_range(prompt: str, response: str, low: int = LENGTH_RANGE_WORDS[0],
                    high: int = LENGTH_RANGE_WORDS[1]) -> float:
    """0 for a response of `low` to `high` words; outside, minus the distance to the range in units of `low`
    (so 5 words short or 5 words over both cost 0.5 with the defaults: 10 to 30 words)."""
    words = len(response.split())
    if words < low:
        return -(low - words) / low
    if words > high:
        return -(words - high) / low
    return 0.0


def has_a_numbered_list(prompt: str, response: str, cap: int = 5) -> float:
    """How many numbered lines ("1. ...", "2) ...") the response holds, capped at `cap`; fewer than 2 is no list."""
    n = len(NUMBERED_LINE.findall(response))
    return float(min(n, cap)) if n >= 2 else 0.0


def avoids_words(prompt: str, response: str, words: tuple[str, ...] = AVOIDED_WORDS) -> float:
    """Minus the number of times the response uses one of `words` (whole words, any case)."""
    text = response.lower()
    return -float(sum(len(re.findall(rf"\b{re.escape(w)}\b", text)) for w in words))


BUILTINS = {
    "length-in-range": "rankloop.oracles:length_in_range",
    "has-a-numbered-list": "rankloop.oracles:has_a_numbered_list",
    "avoids-words": "rankloop.oracles:avoids_words",
}


def prompt_text(prompt: str | Messages) -> str:
    """The prompt as a reward function sees it: the last user turn's text (a plain prompt as it is)."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return str(users[-1] if users else (prompt[-1].get("content", "") if prompt else ""))


@dataclass
class Oracle:
    """Scores responses; `spec` is what the user named, `kind` one of function, model, reward, pairs."""

    spec: str
    kind: str
    fn: Any = None  # function oracles: fn(prompt, response) -> float
    scorer: Any = None  # model oracles: loaded on first use
    model_name: str | None = None
    folder: Path | None = None  # reward oracles: the reward-model folder
    db: Any = None
    pairs: dict[tuple[str, str], float] = field(default_factory=dict)  # pairs oracles: (prompt, response) -> score
    unknown: int = 0  # pairs oracles: responses the file did not know

    def score(self, prompts: list[str | Messages], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if self.kind == "function":
            out = []
            for p, r in zip(prompts, responses, strict=True):
                value = self.fn(prompt_text(p), r)
                if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(float(value)):
                    raise ValueError(f"oracle {self.spec!r}: returned {value!r}, expected a number")
                out.append(float(value))
            return out
        if self.kind == "model":
            if self.scorer is None:
                from reward.score import RewardScorer
                from store.models import get_model

                self.scorer = RewardScorer.from_row(get_model(self.db, self.model_name))
            return [float(x) for x in self.scorer.score(list(prompts), list(responses))]
        if self.kind == "reward":
            if self.scorer is None:
                from reward.score import RewardScorer

                self.scorer = RewardScorer(self.folder)
            return [float(x) for x in self.scorer.score(list(prompts), list(responses))]
        out = []
        for p, r in zip(prompts, responses, strict=True):
            key = (prompt_text(p).strip(), r.strip())
            if key not in self.pairs:
                self.unknown += 1
            out.append(self.pairs.get(key, 0.0))
        return out


def _function_oracle(spec: str, path: str) -> Oracle:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"oracle {spec!r}: expected module:function (e.g. mypkg.rewards:short_answers)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"oracle {spec!r}: cannot import module {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"oracle {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"oracle {spec!r}: {path} is not a function")
    return Oracle(spec, "function", fn=fn)


def reward_folder_oracle(spec: str, folder: str | Path) -> Oracle:
    """An oracle that scores with the reward model saved in `folder` (checked now, loaded on first use)."""
    import json

    from reward.backbone import META_FILE

    path = Path(folder).expanduser()
    if not str(folder).strip():
        raise ValueError(f"oracle {spec!r}: name a reward-model folder after 'reward:'")
    if not path.is_dir():
        raise ValueError(f"oracle {spec!r}: {path} is not a folder")
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"oracle {spec!r}: {path} is not a rankloop reward model (no {META_FILE})") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"oracle {spec!r}: {path / META_FILE} cannot be read ({e})") from e
    if not isinstance(meta, dict) or "method" not in meta:
        raise ValueError(f"oracle {spec!r}: {path / META_FILE} has no 'method' (not a rankloop reward model)")
    return Oracle(spec, "reward", folder=path)


def read_pairs_oracle(spec: str, path: str | Path) -> Oracle:
    """A pairs-file oracle; the whole file is checked first (errors name file, line and field)."""
    from store.errors import InputError
    from store.reading import jsonl_records, require

    path = Path(path)
    scores: dict[tuple[str, str], float] = defaultdict(float)
    n = 0
    for line, obj in jsonl_records(path):
        if not isinstance(obj, dict):
            raise InputError.one(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
        prompt = require(obj, "prompt", (str, list), path, line)
        if isinstance(prompt, list) and not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                for m in prompt):
            raise InputError.one(path, line, "prompt", "chat messages need a string 'content' each")
        chosen = require(obj, "chosen", str, path, line)
        rejected = require(obj, "rejected", str, path, line)
        if chosen.strip() == rejected.strip():
            raise InputError.one(path, line, "rejected", "the same text as 'chosen'")
        text = prompt_text(prompt).strip()
        scores[(text, chosen.strip())] += 1.0
        scores[(text, rejected.strip())] -= 1.0
        n += 1
    if n == 0:
        raise InputError.one(path, None, None, "empty file: no pairs")
    return Oracle(spec, "pairs", pairs=dict(scores))


def resolve_oracle(spec: str, db: str | Path | None = None) -> Oracle:
    """The oracle `spec` names (see the module docstring); fails now, with a message naming `spec`, if it is bad."""
    spec = spec.strip()
    if not spec:
        raise ValueError("oracle: empty; name a built-in (" + ", ".join(BUILTINS) + "), module:function, "
                         "model:NAME, reward:FOLDER or a pairs file")
    if spec in BUILTINS:
        return _function_oracle(spec, BUILTINS[spec])
    if spec.startswith("model:"):
        name = spec[len("model:"):]
        if db is None:
            raise ValueError(f"oracle {spec!r}: a model oracle needs a workspace")
        from store.models import get_model

        row = get_model(db, name)  # UnknownModel names the known ones
        if row.kind != "reward":
            raise ValueError(f"oracle {spec!r}: {name!r} is a {row.kind} model, not a reward model")
        return Oracle(spec, "model", model_name=name, db=db)
    if spec.startswith("reward:"):
        return reward_folder_oracle(spec, spec[len("reward:"):])
    if spec.startswith("pairs:"):
        return read_pairs_oracle(spec, spec[len("pairs:"):])
    if spec.endswith((".jsonl", ".jsonl.gz")) or Path(spec).suffix == ".json":
        return read_pairs_oracle(spec, spec)
    if ":" in spec and not spec.startswith((".", "/", "~")):
        return _function_oracle(spec, spec)
    raise ValueError(f"oracle {spec!r}: unknown; use a built-in ({', '.join(BUILTINS)}), module:function, "
                     "model:NAME, reward:FOLDER, or a pairs file (pairs:PATH or a .jsonl path)")
