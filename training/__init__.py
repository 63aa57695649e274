"""What every trainer shares, beneath `reward/` and `rl/` (docs/architecture.md):

- `training.device`: device and precision choice (one resolver; per-device training defaults);
- `training.runs`: a run's life (its row and folder, closing it as succeeded / failed / cancelled, `--resume`);
- `training.checks`: checkpoint and numeric guards (complete checkpoints, files read back, non-finite loss);
- `training.models`: parameter counts, LoRA settings, registering a trained model with its parent;
- `training.hf`: what every HF trainer shares (TrainingArguments fields, TensorBoard folder, callbacks, the fit);
- `training.config`: typed TOML sections for the config dataclasses;
- `training.stats`: statistics reported by the evaluations (the Wilson interval).

It imports `store/` only; `reward/` and `rl/` import it.
"""
