"""DupMAE's loss terms the straightforward way: the reference for ``retromae_st.bow_max_pool``.

This is ``DupMAELoss.compute_loss_terms`` as it was before the chunked max-pool (RESULTS, issue #6 and
#20): the MLM head's logits at every pooled position (``N x V`` float32, kept by autograd), the OT
vector from a row-wise ``scatter_reduce(amax)`` (ties: gradient split evenly between the holders), the
encoder MLM cross-entropy read off the same logits. ``tests/test_bow_max_pool.py`` checks that the
package's path gives the same loss and gradients; ``benchmarks/train_step.py --variants dupmae-old``
times it beside the new one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retromae_st.dupmae_loss import (
    DupMAELoss,
    bag_of_words_loss,
    bag_of_words_target,
    bag_of_words_tokens,
    ordinary_token_mask,
)
from retromae_st.masking import RetroMAEMasks


def ot_vector_from_logits(
    logits: torch.Tensor, pooled: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Row-wise max of the pooled positions' logits ``(N, V)``: the OT vector ``(B, V)``, zeros for empty rows."""
    if rows is None:
        rows = pooled.nonzero(as_tuple=True)[0]
    result = logits.new_full((pooled.size(0), logits.size(1)), float("-inf"))
    result = result.scatter_reduce(
        0, rows[:, None].expand_as(logits), logits, reduce="amax", include_self=True
    )
    empty = ~pooled.any(dim=1)
    return torch.where(empty[:, None], torch.zeros_like(result), result)


def encoder_mlm_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Encoder MLM cross-entropy at the labelled pooled positions (0 when none is labelled)."""
    labelled = (labels != -100).nonzero().squeeze(1)
    if labelled.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.index_select(0, labelled), labels.index_select(0, labelled))


def reference_dupmae_terms(
    loss, features: dict[str, torch.Tensor], masks: RetroMAEMasks
) -> dict[str, torch.Tensor]:
    """The three terms of ``loss`` (a ``DupMAELoss``) the pre-#20 way, on the same masks."""
    input_ids, attention_mask = features["input_ids"], features["attention_mask"]
    token_embeddings = loss.encode(features, masks.encoder_input_ids)
    pooled = ordinary_token_mask(input_ids, attention_mask, loss.special_tokens, loss.token_rules)
    rows, columns = pooled.nonzero(as_tuple=True)
    logits = loss.mlm_head(token_embeddings[rows, columns]).float()
    ot_vector = ot_vector_from_logits(logits, pooled, rows)
    counted = bag_of_words_tokens(input_ids, attention_mask, loss.special_tokens, loss.token_rules)
    target = bag_of_words_target(input_ids, counted, loss.head_vocab_size)
    return {
        "encoder_mlm": encoder_mlm_from_logits(logits, masks.encoder_labels[rows, columns]),
        "decoder_mlm": loss.decoder_loss(token_embeddings[:, 0], input_ids, masks),
        "bow": loss.bow_loss_weight * bag_of_words_loss(ot_vector, target),
    }


class UnfusedDupMAELoss(DupMAELoss):
    """``DupMAELoss`` computing its terms the pre-#20 way (:func:`reference_dupmae_terms`)."""

    def compute_loss_terms(
        self, features: dict[str, torch.Tensor], masks: RetroMAEMasks
    ) -> dict[str, torch.Tensor]:
        return reference_dupmae_terms(self, features, masks)
