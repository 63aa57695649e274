"""`evaluate_policy` reports the KL of NEW and of AGAINST to the reference policy: by default the root of NEW's
parent chain, loaded without its LoRA adapter; or a policy named with `reference=`."""

from __future__ import annotations

import pytest
import torch

from tests.policy_helpers import register_policy, register_reward, tiny_reward_model
from tests.test_policy_eval import seed_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def chain(workspace, tiny_lm, tmp_path):
    """v0 (root) <- v1 <- v2, three different tiny models, and a reward model; four held-out prompts."""
    from tests.tiny import build_causal_lm

    v0 = register_policy(workspace.db, tiny_lm, "v0")
    v1 = register_policy(workspace.db, build_causal_lm(tmp_path / "v1", seed=3), "v1", parent_id=v0)
    register_policy(workspace.db, build_causal_lm(tmp_path / "v2", seed=5), "v2", parent_id=v1)
    register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm))
    seed_prompts(workspace.db, 4)
    return workspace


def test_kl_to_the_root_of_the_chain(chain):
    from rl.evaluate import evaluate_policy

    m = evaluate_policy(chain, "v1", "v0", max_new_tokens=6, k=2).metrics
    assert m["reference"] == "v0" and m["kl_against_vs_reference"] == 0.0
    assert m["kl_new_vs_reference"] == pytest.approx(m["kl_new_vs_against"])  # the same models, the same samples
    result = evaluate_policy(chain, "v2", "v1", max_new_tokens=6, k=2)
    m = result.metrics
    assert m["reference"] == "v0"  # two generations up, a third model
    assert m["kl_new_vs_reference"] != 0.0 and m["kl_against_vs_reference"] != 0.0
    assert m["kl_new_vs_reference"] != pytest.approx(m["kl_new_vs_against"])
    assert "KL to the reference `v0` per response" in (result.report_dir / "report.md").read_text()
    named = evaluate_policy(chain, "v2", "v1", max_new_tokens=6, k=2, reference="v1").metrics
    assert named["reference"] == "v1" and named["kl_against_vs_reference"] == 0.0
    assert named["kl_new_vs_reference"] == pytest.approx(named["kl_new_vs_against"])


def test_a_lora_root_is_compared_with_its_adapters_disabled(workspace, tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rl.evaluate import evaluate_policy
    from store.models import add_model

    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)  # not a no-op
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm), lora).save_pretrained(str(tmp_path / "adapter"))
    add_model(workspace.db, "lora", "policy", base=str(tiny_lm), path=str(tiny_lm),
              adapter_path=str(tmp_path / "adapter"))
    register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm))
    seed_prompts(workspace.db, 2)
    m = evaluate_policy(workspace, "lora", "lora", max_new_tokens=6, k=2).metrics
    assert m["reference"] == "lora" and m["kl_new_vs_against"] == pytest.approx(0)
    assert m["kl_new_vs_reference"] != pytest.approx(0)  # the adapter moved it away from its base
