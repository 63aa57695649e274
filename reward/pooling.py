"""How a reward model turns a sequence into one vector: the architecture's own way, or the mean of the response.

BERT-style encoders read their score from the [CLS] token through the pooler, a layer pre-trained for next-sentence
prediction. Sentence encoders such as all-MiniLM-L6-v2 were trained instead for mean-pooled embeddings, so for them
the mean of the response tokens' final hidden states is the natural summary. `response_mean` encodes prompt and
response as a pair, `[CLS] prompt [SEP] response [SEP]`, and averages every position after the first [SEP]; the
tokens still attend to the whole prompt.

It is an option, not the default, because it did not win where it counts. In a plain PyTorch loop
(`scripts/reward_pooling.py cls|resp`, same data, order and steps) the response mean beat the [CLS] token on HH
harmless-base, 0.651 against 0.629 test accuracy; but through `rankloop train reward` (TRL, the pair encoding, 10%
of prompts held out) it scored 0.629 against 0.640 for the [CLS] pooler (`scripts/reward_real_data.py --data hh
--set pooling=response_mean`). Both gaps are within one run's noise (95% intervals of +-0.045).

TRL's collator passes only input_ids and attention_mask to the model, so the response is found from the [SEP] token,
not from an extra input.
"""

from __future__ import annotations

import functools
from typing import Any

POOLINGS = ("own", "response_mean")


def check_pooling(pooling: str, location: str) -> None:
    """Refuse response-mean pooling for a backbone that is not a BERT-style encoder."""
    from transformers import AutoConfig, AutoTokenizer

    if pooling == "own":
        return
    model_type = AutoConfig.from_pretrained(location).model_type
    tokenizer = AutoTokenizer.from_pretrained(location)
    bert_like = model_type == "bert" and tokenizer.sep_token_id is not None and tokenizer.cls_token_id is not None
    if pooling == "response_mean" and not bert_like:
        raise ValueError(f"pooling: 'response_mean' needs a BERT-style encoder with [CLS]/[SEP] tokens; "
                         f"{location} is a {model_type!r} model (use 'own')")


def response_mask(input_ids: Any, attention_mask: Any, sep_token_id: int) -> Any:
    """1.0 at the attended positions after each row's first [SEP] (the response and its closing [SEP])."""
    import torch

    is_sep = (input_ids == sep_token_id).int()
    after_first_sep = (torch.cumsum(is_sep, dim=1) - is_sep) > 0
    mask = after_first_sep & attention_mask.bool()
    empty = ~mask.any(dim=1)  # no [SEP] inside the window: fall back to every attended token
    mask[empty] = attention_mask.bool()[empty]
    return mask.to(torch.float32)


@functools.cache
def response_mean_class() -> type:
    """BertForSequenceClassification scoring the mean of the response tokens (same weights and file layout)."""
    from transformers import BertForSequenceClassification
    from transformers.modeling_outputs import SequenceClassifierOutput

    class ResponseMeanBert(BertForSequenceClassification):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.bert.pooler = None  # unused here; a parameter without gradients would trip DDP

        def forward(self, input_ids: Any = None, attention_mask: Any = None, token_type_ids: Any = None,
                    **kwargs: Any) -> Any:
            if attention_mask is None:
                attention_mask = (input_ids != self.config.pad_token_id).long()
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = response_mask(input_ids, attention_mask, self.config.sep_token_id).to(hidden.dtype)
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))

    return ResponseMeanBert
