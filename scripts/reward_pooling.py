"""Which pooling suits all-MiniLM-L6-v2 as a reward model? A plain PyTorch loop, same data, order and steps for each.

    .venv/bin/python scripts/reward_pooling.py cls    # [CLS] token's final hidden state -> linear head
    .venv/bin/python scripts/reward_pooling.py resp   # mean of the response tokens' final hidden states -> linear

Trains one epoch (batch 8, AdamW 1e-4, 5% warmup then linear decay, Bradley-Terry loss + 0.01 reward centering,
batches grouped by length) on every pair of scripts/data/hh_rlhf_harmless_base...train, and prints the accuracy on
the eval file. Prompt and response are concatenated as text (left-truncated to 512 tokens); `resp` finds the
response as the last N tokens. This is the experiment behind `pooling = "auto"` in reward.pooling; rankloop itself
encodes the pair with a [SEP] between them instead (TRL's collator passes no extra inputs).
"""

from __future__ import annotations

import gzip
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "scripts" / "data" / "hh_rlhf_harmless_base.derived_from_test."


def main() -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from reward.backbone import builtin_folder

    mode = sys.argv[1] if len(sys.argv) > 1 else "resp"
    if mode not in ("cls", "resp"):
        sys.exit("usage: reward_pooling.py cls|resp")
    torch.manual_seed(0)
    random.seed(0)
    train, test = ([json.loads(line) for line in gzip.open(f"{DATA}{part}.jsonl.gz", "rt")] for part in
                   ("train", "eval"))
    folder = str(builtin_folder("all-minilm-l6-v2"))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.truncation_side = "left"
    enc = AutoModel.from_pretrained(folder)
    head = torch.nn.Linear(enc.config.hidden_size, 1)

    def score(prompts: list[str], responses: list[str]):
        t = tok([p + r for p, r in zip(prompts, responses, strict=True)], truncation=True, max_length=512,
                padding=True, return_tensors="pt")
        hidden = enc(**t).last_hidden_state
        if mode == "cls":
            return head(hidden[:, 0]).squeeze(-1)
        lengths = t["attention_mask"].sum(1).long()
        n_resp = [len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for r in responses]  # + the final [SEP]
        mask = torch.zeros_like(t["attention_mask"], dtype=hidden.dtype)
        for i, n in enumerate(n_resp):
            mask[i, max(1, int(lengths[i]) - n):int(lengths[i])] = 1
        return head((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).squeeze(-1)

    order = list(range(len(train)))
    random.shuffle(order)
    size = [len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])) for r in train]
    chunks = [sorted(order[i:i + 64], key=lambda j: size[j]) for i in range(0, len(order), 64)]
    batches = [c[i:i + 8] for c in chunks for i in range(0, len(c), 8)]
    random.shuffle(batches)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=1e-4, weight_decay=0.0)
    steps, warm = len(batches), max(1, int(0.05 * len(batches)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm))))
    started = time.time()
    enc.train()
    for step, batch in enumerate(batches):
        rows = [train[i] for i in batch]
        prompts = [r["prompt"] for r in rows]
        chosen, rejected = score(prompts, [r["chosen"] for r in rows]), score(prompts, [r["rejected"] for r in rows])
        loss = -F.logsigmoid(chosen - rejected).mean() + 0.01 * ((chosen + rejected) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            print(f"step {step}/{steps} loss {loss.item():.3f} {time.time() - started:.0f} s", flush=True)
    enc.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test), 16):
            rows = test[i:i + 16]
            prompts = [r["prompt"] for r in rows]
            correct += int((score(prompts, [r["chosen"] for r in rows]) >
                            score(prompts, [r["rejected"] for r in rows])).sum())
    print(f"RESULT {mode}: test accuracy {correct / len(test):.4f} ({correct}/{len(test)}), "
          f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
