"""The demo workspace (`scripts/demo`): its reviewer guidelines, and its first candidates sampled by a background job.

`python -m rankloop.demo WORKSPACE [--policy NAME]` writes the demo guidelines unless the workspace has some, and
queues `rankloop generate` for the first comparisons as a background job (rankloop.jobs: the admin's Runs page
shows it with its progress) unless they exist or a generate job is already queued or running. It returns at once,
so the ranking page can be served while the first answers are sampled; each batch is queued for reviewers as soon
as it is decoded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from store.jobs import JobRow

DATA = Path(__file__).parent / "data"
PROMPTS = DATA / "demo_prompts.jsonl"
GUIDELINES = DATA / "demo_guidelines.md"
ACTOR = "demo"
FIRST_COMPARISONS = 8  # train prompts sampled for the first round (4 answers each)
K = 4
MAX_NEW_TOKENS = 128  # the demo prompts ask for short answers: they end well before this (rankloop/data/README.md)


def write_guidelines(db: str | Path, text: str | None = None) -> bool:
    """Store the demo guidelines unless the workspace already has guidelines; True when they were written."""
    from store.settings import get_settings, set_setting

    if get_settings(db)["guidelines"].strip():
        return False
    set_setting(db, "guidelines", GUIDELINES.read_text(encoding="utf-8") if text is None else text, ACTOR)
    return True


def start_first_candidates(root: str | Path, db: str | Path, *, policy: str | None = None,
                           comparisons: int = FIRST_COMPARISONS, k: int = K,
                           max_new_tokens: int = MAX_NEW_TOKENS) -> JobRow | None:
    """Queue the generate job for the first `comparisons` comparisons; None when nothing is missing or a generate
    job is already queued or running (its prompts would be picked twice otherwise)."""
    from rankloop.jobs import launch, refresh
    from store.db import read

    if any(j.active and j.command == "generate" for j in refresh(db)):
        return None
    have = read(db, lambda con: con.execute("SELECT count(*) FROM comparisons").fetchone()[0])
    if have >= comparisons:
        return None
    values = {"policy": policy or "", "prompts": comparisons - have, "k": k, "max-new-tokens": max_new_tokens,
              "split": "train"}
    return launch(root, db, "generate", values, "", ACTOR)


def main(argv: list[str] | None = None) -> int:
    from rankloop.workspace import open_workspace

    parser = argparse.ArgumentParser(prog="python -m rankloop.demo", description=__doc__.split("\n")[0])
    parser.add_argument("workspace")
    parser.add_argument("--policy", default=None, help="policy to sample from (default: the workspace's)")
    args = parser.parse_args(argv)
    try:
        ws = open_workspace(args.workspace)
        if write_guidelines(ws.db):
            print(f"reviewer guidelines written (from {GUIDELINES.name}; admins edit them on the Settings page)")
        job = start_first_candidates(ws.root, ws.db, policy=args.policy)
    except (OSError, ValueError, RuntimeError) as e:  # not a workspace, a bad policy name, a busy database
        print(f"error: {e}", file=sys.stderr)
        return 1
    if job is not None:
        print(f"first candidates: background job {job.id} samples {K} answers for up to {FIRST_COMPARISONS} prompts; "
              f"each batch is queued for reviewers when it is written (progress: Runs page, or {job.log_path})")
        return 0
    from rankloop.jobs import refresh
    from store.db import read

    running = next((j for j in refresh(ws.db) if j.active and j.command == "generate"), None)
    if running is not None:
        print(f"first candidates: background job {running.id} is still sampling them (progress: Runs page, or "
              f"{running.log_path})")
    else:
        have = read(ws.db, lambda con: con.execute("SELECT count(*) FROM comparisons").fetchone()[0])
        print(f"first candidates: {have} comparisons queued already")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
