"""Straightforward reference implementations used to check and time our optimised code.

Kept out of the package on purpose: these are written the way the authors' code does things
(GitHub staoxiao/RetroMAE, ``src/pretrain/data.py``, on top of transformers'
``DataCollatorForWholeWordMask``), per example in Python, with deep copies.

Checked line by line against the authors' ``RetroMAECollator`` at commit
ee375876a5e571617e37dd43450decc7865e2a07 and against transformers 4.46.3
(``data/data_collator.py``: ``_whole_word_mask``, ``torch_mask_tokens``; ``tokenization_utils_base.py``:
``get_special_tokens_mask(..., already_has_special_tokens=True)``, 1 for every id in ``all_special_ids``).
Their token rules, which :class:`retromae_st.RetroMAELoss` follows with ``token_rules="authors"``:

- words: every token but the strings ``[CLS]`` and ``[SEP]``, so ``[UNK]`` and any other special id inside
  the text is a word, and a ``##`` piece continues the last word seen;
- encoder: the chosen words' tokens lose their special ids afterwards (``torch_mask_tokens``): a chosen
  ``[UNK]`` used up budget but is neither corrupted nor labelled;
- decoder: the pool masks hide ``[UNK]`` like any word (no special-token filter); labels are the ids with
  the first and the last position set to -100.
"""

from __future__ import annotations

import math
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
        if any(index in covered for index in index_set):
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


def additive_attention_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """BERT's ``get_extended_attention_mask`` for a ``(B, L, L)`` 0/1 mask: ``(B, 1, L, L)`` additive."""
    extended = visible[:, None, :, :].to(dtype)
    return (1.0 - extended) * torch.finfo(dtype).min


def reference_decoder_layer(
    layer: torch.nn.Module, query: torch.Tensor, key_value: torch.Tensor, additive_mask: torch.Tensor
) -> torch.Tensor:
    """The authors' ``BertLayerForDecoder`` forward: explicit scores, additive mask, softmax, dropout.

    Runs on the weights of our :class:`retromae_st.EnhancedDecoderLayer` so both can be compared.
    """
    batch, length, width = query.shape
    heads = layer.num_attention_heads
    head_size = width // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, heads, head_size).permute(0, 2, 1, 3)

    q, k, v = split(layer.query(query)), split(layer.key(key_value)), split(layer.value(key_value))
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_size)
    scores = scores + additive_mask
    probabilities = torch.nn.functional.softmax(scores, dim=-1)
    probabilities = torch.nn.functional.dropout(
        probabilities, layer.attention_probs_dropout_prob, training=layer.training
    )
    context = torch.matmul(probabilities, v).permute(0, 2, 1, 3).reshape(batch, length, width)
    attended = layer.attention_norm(layer.dropout(layer.attention_output(context)) + query)
    transformed = layer.output(layer.activation(layer.intermediate(attended)))
    return layer.output_norm(layer.dropout(transformed) + attended)


def full_vocabulary_mlm_loss(
    head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The authors' ``mlm_loss``: logits at every position over the whole vocabulary, then CE."""
    scores = head(hidden)
    return torch.nn.functional.cross_entropy(scores.view(-1, scores.size(-1)), labels.view(-1))


class ReferenceRetroMAEModel(torch.nn.Module):
    """The authors' ``RetroMAEForPretraining.forward``, written the straightforward way.

    It shares every weight with a :class:`retromae_st.RetroMAELoss` (encoder, decoder layer, MLM
    head), so on the same masks the two must give the same loss and the same gradients; only the
    way of computing differs: full ``B x L x V`` logits, a BertLayer-style decoder with an additive
    ``(B, 1, L, L)`` float mask, and inputs from the per-example :class:`ReferenceRetroMAECollator`.
    """

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = self.loss
        hidden = loss.model(
            {"input_ids": batch["encoder_input_ids"], "attention_mask": batch["encoder_attention_mask"]}
        )["token_embeddings"]
        encoder_mlm = full_vocabulary_mlm_loss(loss.mlm_head, hidden, batch["encoder_labels"])
        decoded = self.decode(hidden[:, 0], batch["decoder_input_ids"], batch["decoder_attention_mask"])
        decoder_mlm = full_vocabulary_mlm_loss(loss.mlm_head, decoded, batch["decoder_labels"])
        return {"encoder_mlm": encoder_mlm, "decoder_mlm": decoder_mlm}

    def decode(
        self, sentence_embedding: torch.Tensor, input_ids: torch.Tensor, attention: torch.Tensor
    ) -> torch.Tensor:
        query, key_value = self.loss.decoder_inputs(sentence_embedding, input_ids)
        return reference_decoder_layer(
            self.loss.decoder, query, key_value, additive_attention_mask(attention, query.dtype)
        )


def reference_batch_from_masks(features: dict[str, torch.Tensor], masks) -> dict[str, torch.Tensor]:
    """Our :class:`retromae_st.masking.RetroMAEMasks` in the reference's input format (same masks)."""
    return {
        "encoder_input_ids": masks.encoder_input_ids,
        "encoder_attention_mask": features["attention_mask"],
        "encoder_labels": masks.encoder_labels,
        "decoder_input_ids": features["input_ids"],
        "decoder_attention_mask": masks.decoder_visible.long(),
        "decoder_labels": masks.decoder_labels,
    }
