"""Response-mean pooling for BERT-style reward models (reward.pooling), with a tiny BERT built here: the mask,
the pair encoding, training through TRL, and a saved model that scores exactly as it trained."""

from __future__ import annotations

import pytest

from reward.config import RewardConfigError, RewardTrainingConfig
from reward.data import encode
from reward.pooling import check_pooling, response_mask
from reward.score import RewardScorer
from reward.train import train_reward_model
from store.models import add_model
from store.runs import get_run
from tests.reward_data import seed_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from tests.tiny import build_encoder

    return build_encoder(tmp_path_factory.mktemp("tiny_bert"))


def test_the_mask_covers_what_follows_the_first_sep():
    import torch

    ids = torch.tensor([[2, 10, 11, 3, 20, 21, 3, 0], [2, 10, 3, 20, 3, 0, 0, 0], [2, 10, 11, 12, 0, 0, 0, 0]])
    attention = (ids != 0).long()
    assert response_mask(ids, attention, sep_token_id=3).tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],  # no [SEP]: every attended token
    ]


def test_pair_encoding_keeps_the_response_and_its_separator(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    long_prompt = "one two three four five six seven eight nine ten " * 20
    (ids,) = encode(tok, [long_prompt], ["the capital of france is paris."], 24, append_eos=False, pair=True)
    assert len(ids) == 24 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    response = tok("the capital of france is paris.", add_special_tokens=False)["input_ids"]
    assert ids[-len(response) - 2] == tok.sep_token_id and ids[-len(response) - 1:-1] == response


def test_response_mean_is_for_bert_style_encoders_only(tiny_bert, tiny_lm):
    check_pooling("response_mean", str(tiny_bert))
    check_pooling("own", str(tiny_lm))
    with pytest.raises(ValueError, match="^pooling: 'response_mean' needs a BERT-style encoder"):
        check_pooling("response_mean", str(tiny_lm))
    with pytest.raises(RewardConfigError, match="^pooling: must be 'own' or 'response_mean'"):
        RewardTrainingConfig(pooling="max")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_trains_saves_and_scores_the_same(workspace, tiny_bert, method):
    add_model(workspace.db, "tiny-bert", "policy", base=str(tiny_bert), path=str(tiny_bert))
    seed_pairs(workspace.db, 24)
    config = RewardTrainingConfig(base="tiny-bert", method=method, pooling="response_mean", max_steps=12,
                                  eval_steps=12, logging_steps=1, learning_rate=3e-3, report_to=[],
                                  eval_fraction=0.25, max_length=64, per_device_train_batch_size=4)
    result = train_reward_model(workspace, config, progress=False)
    run = get_run(workspace.db, result.run_id)
    assert run.metrics["pooling"] == "response_mean"
    assert result.metrics["eval_accuracy"] >= 0.5  # learning itself is shown by tests/test_reward_train.py
    scorer = RewardScorer(result.model_dir)
    assert type(scorer.model).__name__ == "ResponseMeanBert" and scorer.pair
    prompt = "Question 1: say something useful."
    good, bad = scorer.score([prompt, prompt], ["The capital of France is Paris.", "I am sorry, I cannot help "
                                                                                   "with that."])
    assert good != bad
    # the saved model scores as the trained one did on the held-out pairs
    from reward.evaluate import evaluate_reward_model

    ev = evaluate_reward_model(workspace, result.model_name)
    assert ev.metrics["accuracy"] == pytest.approx(result.metrics["eval_accuracy"])
