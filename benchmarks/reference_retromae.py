"""Straightforward reference implementations used to check and time our optimised code.

Kept out of the package on purpose: these are written the way the authors' code does things
(GitHub staoxiao/RetroMAE, ``src/pretrain/data.py``, on top of transformers'
``DataCollatorForWholeWordMask``), per example in Python, with deep copies.
"""

from __future__ import annotations

import random
from copy import deepcopy

import torch


def whole_word_mask(tokens: list[str], mlm_probability: float, max_predictions: int = 512) -> list[int]:
    """transformers' ``DataCollatorForWholeWordMask._whole_word_mask`` (v4), for WordPiece tokens."""
    cand_indexes: list[list[int]] = []
    for i, token in enumerate(tokens):
        if token in ("[CLS]", "[SEP]"):
            continue
        if len(cand_indexes) >= 1 and token.startswith("##"):
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    random.shuffle(cand_indexes)
    num_to_predict = min(max_predictions, max(1, int(round(len(tokens) * mlm_probability))))
    masked_lms: list[int] = []
    covered: set[int] = set()
    for index_set in cand_indexes:
        if len(masked_lms) >= num_to_predict:
            break
        if len(masked_lms) + len(index_set) > num_to_predict:
            continue
        for index in index_set:
            covered.add(index)
            masked_lms.append(index)
    return [1 if i in covered else 0 for i in range(len(tokens))]


def pad(sequences: list[torch.Tensor], value: int) -> torch.Tensor:
    """The authors' ``tensorize_batch``: right-pad 1-D or 2-D (square) tensors."""
    length = max(s.size(0) for s in sequences)
    shape = (len(sequences), length) if sequences[0].dim() == 1 else (len(sequences), length, length)
    out = torch.full(shape, value, dtype=sequences[0].dtype)
    for i, s in enumerate(sequences):
        if s.dim() == 1:
            out[i, : s.size(0)] = s
        else:
            out[i, : s.size(0), : s.size(1)] = s
    return out


class ReferenceRetroMAECollator:
    """The authors' ``RetroMAECollator``: per-example Python masking with a pool of decoder masks."""

    def __init__(
        self,
        tokenizer,
        encoder_mlm_probability: float = 0.3,
        decoder_mlm_probability: float = 0.5,
        pool_size: int = 256,
    ):
        self.tokenizer = tokenizer
        self.encoder_mlm_probability = encoder_mlm_probability
        self.decoder_mlm_probability = decoder_mlm_probability
        self.pool_size = pool_size

    def torch_mask_tokens(self, inputs: torch.Tensor, mask_labels: torch.Tensor):
        labels = inputs.clone()
        probability_matrix = mask_labels.float()
        special = [
            self.tokenizer.get_special_tokens_mask(v, already_has_special_tokens=True)
            for v in labels.tolist()
        ]
        probability_matrix.masked_fill_(torch.tensor(special, dtype=torch.bool), value=0.0)
        probability_matrix.masked_fill_(labels.eq(self.tokenizer.pad_token_id), value=0.0)
        masked_indices = probability_matrix.bool()
        labels[~masked_indices] = -100
        replaced = torch.bernoulli(torch.full(labels.shape, 0.8)).bool() & masked_indices
        inputs[replaced] = self.tokenizer.mask_token_id
        random_ = torch.bernoulli(torch.full(labels.shape, 0.5)).bool() & masked_indices & ~replaced
        inputs[random_] = torch.randint(len(self.tokenizer), labels.shape, dtype=torch.long)[random_]
        return inputs, labels

    def __call__(self, batch_input_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """``batch_input_ids``: token ids of each example, special tokens included, unpadded."""
        input_ids, attention, encoder_masks, decoder_labels, decoder_attention = [], [], [], [], []
        for ids in batch_input_ids:
            ids = list(ids)
            tokens = self.tokenizer.convert_ids_to_tokens(ids)
            encoder_mask = whole_word_mask(tokens, self.encoder_mlm_probability)
            pool = min(len(tokens), self.pool_size)
            mask_set = [whole_word_mask(tokens, self.decoder_mlm_probability) for _ in range(pool)]
            matrix = []
            for i in range(len(tokens)):
                row = deepcopy(mask_set[random.randint(0, pool - 1)])
                row[i] = 1
                matrix.append(row)
            input_ids.append(torch.tensor(ids))
            attention.append(torch.ones(len(ids), dtype=torch.long))
            labels = list(ids)
            labels[0] = -100
            labels[-1] = -100
            decoder_labels.append(torch.tensor(labels))
            encoder_masks.append(torch.tensor(encoder_mask))
            decoder_attention.append(1 - torch.tensor(matrix))
        ids = pad(input_ids, self.tokenizer.pad_token_id)
        encoder_input_ids, encoder_labels = self.torch_mask_tokens(ids.clone(), pad(encoder_masks, 0))
        return {
            "encoder_input_ids": encoder_input_ids,
            "encoder_attention_mask": pad(attention, 0),
            "encoder_labels": encoder_labels,
            "decoder_input_ids": ids,
            "decoder_attention_mask": pad(decoder_attention, 0),
            "decoder_labels": pad(decoder_labels, -100),
        }
