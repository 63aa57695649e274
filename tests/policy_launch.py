"""Entry point for `accelerate launch` in tests: `python -m rankloop`, except that with RANKLOOP_TEST_FAIL_PROCESS=N
the process of rank N raises at the end of its second DPO training step (a failure on that process only)."""

import os

if os.environ.get("RANKLOOP_TEST_FAIL_PROCESS") == os.environ.get("RANK"):
    from transformers import TrainerCallback

    import rl.dpo

    class FailAtStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError(f"injected failure on process {os.environ['RANK']} at step 2")

    made = rl.dpo.trainer_callbacks
    rl.dpo.trainer_callbacks = lambda *a, **kw: [*made(*a, **kw), FailAtStep2()]

if __name__ == "__main__":
    from rankloop.cli import main

    main()
