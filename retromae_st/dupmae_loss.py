from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from retromae_st.bow_max_pool import bow_max_pool
from retromae_st.dupmae_pooling import DUPMAE_CITATION, DupMAEPooling
from retromae_st.masking import RetroMAEMasks, check_token_rules, decoder_targets, maskable_tokens
from retromae_st.mlm_head import head_activation, projection_parts
from retromae_st.model_card import carried_over_card_data
from retromae_st.retromae_loss import RetroMAELoss


def ordinary_token_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_tokens: torch.Tensor,
    token_rules: str = "authors",
) -> torch.Tensor:
    """``(B, L)`` bool: the positions DupMAE's OT max-pool reads. ``"authors"``: every real position after
    ``[CLS]``, ``[SEP]`` included (their ``ot_embedding`` pools ``logits[:, 1:]`` under the attention mask);
    ``"skip_special"``: the real tokens after position 0 that are not special."""
    if check_token_rules(token_rules) == "authors":
        ordinary = attention_mask.bool().clone()
    else:
        ordinary = maskable_tokens(input_ids, attention_mask, special_tokens)
    ordinary[:, 0] = False
    return ordinary


def bag_of_words_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_tokens: torch.Tensor,
    token_rules: str = "authors",
) -> torch.Tensor:
    """``(B, L)`` bool: the tokens the BoW target counts. ``"authors"``: the text's own tokens, i.e. every real
    position but the first and the last (their collator counts ``token_ids``, which hold ``[UNK]`` and any
    in-text special id but not the added ``[CLS]``/``[SEP]``); ``"skip_special"``: the non-special tokens."""
    if check_token_rules(token_rules) == "authors":
        return decoder_targets(input_ids, attention_mask, special_tokens, token_rules)
    return ordinary_token_mask(input_ids, attention_mask, special_tokens, token_rules)


def bag_of_words_target(
    input_ids: torch.Tensor,
    ordinary: torch.Tensor,
    vocab_size: int,
    positions: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The authors' BoW target ``(B, V)``: ``1 / n`` at every distinct counted token of a row of ``n`` of them
    (``ordinary``: the counted tokens, :func:`bag_of_words_tokens`).

    As in the authors' collator the weight is assigned, not accumulated: a repeated token gets ``1 / n``
    once, so a row sums to ``#distinct / n``. Rows without counted tokens are all zeros. ``positions``
    is ``ordinary.nonzero(as_tuple=True)`` when the caller has it already.
    """
    rows, columns = ordinary.nonzero(as_tuple=True) if positions is None else positions
    counts = ordinary.sum(dim=1).clamp(min=1)
    weight = torch.zeros(input_ids.size(0), vocab_size, device=input_ids.device)
    weight[rows, input_ids[rows, columns]] = (1.0 / counts.float())[rows]
    return weight


def bag_of_words_loss(ot_vector: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_b( -sum_v target[b, v] * log_softmax(ot_vector[b])[v] )`` (the authors' ``decoder_ot_loss``)."""
    log_probs = F.log_softmax(ot_vector.float(), dim=-1)
    return -(target * log_probs).sum(dim=1).mean()


class DupMAELoss(RetroMAELoss):
    def __init__(
        self,
        model: SentenceTransformer,
        encoder_mask_ratio: float = 0.3,
        decoder_mask_ratio: float = 0.5,
        decoder_pool_size: int = 256,
        bow_loss_weight: float = 0.1,
        token_rules: str = "authors",
        chunk_size: int | None = None,
    ) -> None:
        """
        DupMAE (RetroMAE-2) pre-training: :class:`retromae_st.RetroMAELoss` plus a bag-of-words (BoW)
        auto-encoding task on the ordinary tokens. The encoder's final hidden states of the ordinary
        tokens (not ``[CLS]``, not special, not padding) of the *masked* input go through the MLM head;
        max-pooling over positions gives a vocabulary-sized "OT" vector, trained with cross-entropy of its
        log-softmax against the input's bag-of-words distribution.
        Loss = encoder MLM + decoder MLM + ``bow_loss_weight`` x BoW.

        Faithful to the authors' ``modeling_duplex.py`` / ``DupMAECollator``, with these notes:

        - decoder query stream: ``embeddings(inputs_embeds=cls)``, i.e. ``[CLS]`` + position + token-type
          embeddings passed through the embeddings' LayerNorm and dropout (RetroMAE's ``modeling.py`` adds
          position embeddings only); :meth:`decoder_inputs` is overridden to match;
        - BoW target: ``1 / n`` *assigned* to each distinct token of the ``n`` content tokens, so repeated
          tokens count once (:func:`bag_of_words_target`); with ``token_rules="authors"`` the content tokens
          are every position but ``[CLS]`` and the final ``[SEP]``, ``[UNK]`` included, as in their collator;
        - OT max-pool: with ``token_rules="authors"`` (default) every non-padding position after ``[CLS]``,
          ``[SEP]`` included, as the authors' ``ot_embedding``; with ``"skip_special"`` only the non-special
          tokens (both the pool and the target; the rule of earlier versions). :func:`build_dupmae_model`
          gives :class:`retromae_st.DupMAEPooling` the same rule, so inference pools what training pooled;
        - one vocabulary projection of the pooled positions, chunk by chunk, serves both the encoder MLM
          loss and the OT max-pool (the authors compute ``B x L x V`` logits and keep them for backward);
          padding (and ``[CLS]``) is never projected. Nothing ``N x V`` is kept: the max-pool's backward
          needs only the ``B x V`` arg-max positions and the cross-entropy's is computed in the forward pass
          (:mod:`retromae_st.bow_max_pool`). Same loss and gradients as logits kept for autograd (ties: the
          gradient split evenly between the positions holding the max, as autograd's ``amax`` does), tested
          in ``tests/test_bow_max_pool.py``.

        Args:
            model: A SentenceTransformer of a BERT-family ``Transformer`` + ``Pooling(pooling_mode="cls")``
                (see :func:`retromae_st.load_cls_model`).
            encoder_mask_ratio: Fraction of tokens masked in the encoder input.
            decoder_mask_ratio: Fraction of tokens each decoder position cannot see.
            decoder_pool_size: Number of decoder masks drawn per example.
            bow_loss_weight: Weight of the BoW term (authors' default 0.1); must be >= 0.
            token_rules: ``"authors"`` (default) or ``"skip_special"``, as in :class:`retromae_st.RetroMAELoss`;
                also decides the OT max-pool's positions and the BoW target's tokens (see above).
            chunk_size: Pooled positions projected onto the vocabulary at once (memory ``chunk_size x V``
                float32 logits); ``None`` (default) keeps a chunk at 2**24 values (64 MiB). Does not change
                the loss or its gradients.

        References:
            - RetroMAE-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented Language Models
              (Xiao et al., ACL 2023): https://arxiv.org/abs/2305.02564
            - Code: https://github.com/staoxiao/RetroMAE (``src/pretrain/modeling_duplex.py``, ``data.py``)

        Requirements:
            1. A BERT-family encoder with a tokenizer that has a mask token.
            2. CLS pooling during pre-training; use :func:`retromae_st.build_dupmae_model` afterwards to get
               the DupMAE representation (``[CLS]`` + top-k OT vector).

        Inputs:
            +-----------------+--------+
            | Texts           | Labels |
            +=================+========+
            | (text)          | none   |
            +-----------------+--------+

        Relations:
            - Extends :class:`retromae_st.RetroMAELoss` (same masking, decoder and MLM head).

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer
                from retromae_st import DupMAELoss, build_dupmae_model, load_cls_model

                model = load_cls_model("bert-base-uncased", max_seq_length=256)
                train_dataset = Dataset.from_dict({"text": ["First passage.", "Second passage."]})
                loss = DupMAELoss(model)
                SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss).train()
                build_dupmae_model(loss, top_k=256).save("dupmae-model")
        """
        super().__init__(
            model,
            encoder_mask_ratio=encoder_mask_ratio,
            decoder_mask_ratio=decoder_mask_ratio,
            decoder_pool_size=decoder_pool_size,
            token_rules=token_rules,
        )
        if isinstance(bow_loss_weight, bool) or not isinstance(bow_loss_weight, (int, float)):
            raise TypeError(f"bow_loss_weight must be a float >= 0, got {type(bow_loss_weight).__name__}")
        if not bow_loss_weight >= 0.0 or bow_loss_weight == float("inf"):
            raise ValueError(f"bow_loss_weight must be a finite float >= 0, got {bow_loss_weight}")
        self.bow_loss_weight = float(bow_loss_weight)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.chunk_size = chunk_size

    term_names = (*RetroMAELoss.term_names, "bow")

    @property
    def head_vocab_size(self) -> int:
        return projection_parts(self.mlm_head)[1].size(0)

    def compute_loss_terms(
        self, features: dict[str, torch.Tensor], masks: RetroMAEMasks
    ) -> dict[str, torch.Tensor]:
        """Encoder MLM, decoder MLM and the weighted BoW loss of a batch under the given masks."""
        input_ids = features["input_ids"]
        token_embeddings = self.encode(features, masks.encoder_input_ids)
        attention_mask = features["attention_mask"]
        pooled = ordinary_token_mask(input_ids, attention_mask, self.special_tokens, self.token_rules)
        ot_vector, encoder_mlm = self.ot_vector_and_encoder_mlm(
            token_embeddings, pooled, masks.encoder_labels
        )
        counted = bag_of_words_tokens(input_ids, attention_mask, self.special_tokens, self.token_rules)
        target = bag_of_words_target(input_ids, counted, self.head_vocab_size)
        return {
            "encoder_mlm": encoder_mlm,
            "decoder_mlm": self.decoder_loss(token_embeddings[:, 0], input_ids, masks),
            "bow": self.bow_loss_weight * bag_of_words_loss(ot_vector, target),
        }

    def ot_vector_and_encoder_mlm(
        self, token_embeddings: torch.Tensor, pooled: torch.Tensor, encoder_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The OT vector ``(B, V)`` and the encoder MLM loss from one chunked vocabulary projection of the
        pooled positions (:func:`retromae_st.bow_max_pool.bow_max_pool`). Every encoder label lies at a
        pooled position (masking only labels real, non-``[CLS]`` tokens)."""
        rows, columns = pooled.nonzero(as_tuple=True)  # one host synchronisation for the pooled positions
        transform, weight, bias = projection_parts(self.mlm_head)
        return bow_max_pool(
            transform(token_embeddings[rows, columns]),
            weight,
            bias,
            pooled,
            labels=encoder_labels[rows, columns],
            chunk_size=self.chunk_size,
        )

    def decoder_inputs(
        self, sentence_embedding: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As the authors' DupMAE: the query is ``embeddings(inputs_embeds=cls)`` (LayerNorm + dropout applied)."""
        embeddings = self.transformer.auto_model.embeddings
        token_embeddings = self.decoder_token_embeddings(input_ids)
        key_value = torch.cat([sentence_embedding[:, None], token_embeddings[:, 1:]], dim=1)
        query = sentence_embedding[:, None].expand_as(key_value)
        if self.decoder.position_embeddings is not None:
            # An encoder without a position table: its embedding layer gets the decoder's own positions.
            query = query + self.decoder_positions(input_ids.size(1), input_ids.device)[None]
        return embeddings(inputs_embeds=query), key_value

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "bow_loss_weight": self.bow_loss_weight}

    @property
    def citation(self) -> str:
        return DUPMAE_CITATION + super().citation  # DupMAE's objective includes RetroMAE's


def build_dupmae_model(
    loss: DupMAELoss,
    top_k: int = 256,
    projection_dim: int | None = None,
    activation: str = "none",
    chunk_size: int = 512,
) -> SentenceTransformer:
    """A SentenceTransformer giving DupMAE's representation: ``loss.model``'s Transformer + a
    :class:`retromae_st.DupMAEPooling` holding a copy of ``loss``'s (trained) MLM head, with
    ``similarity_fn_name="dot"`` so that ``model.similarity`` is the paper's score.

    The pooling pools the positions ``loss`` pooled in training (its ``token_rules``). The Transformer module
    is shared with ``loss.model`` (not copied): save the result to freeze it.
    """
    if not isinstance(loss, DupMAELoss):
        raise TypeError(f"loss must be a DupMAELoss, got {type(loss).__name__}")
    transformer = loss.transformer
    config = transformer.auto_model.config
    special_ids = loss.special_tokens.nonzero().flatten().tolist()
    pooling = DupMAEPooling.from_mlm_head(
        loss.mlm_head,
        special_token_ids=[token for token in special_ids if token < loss.head_vocab_size],
        hidden_act=head_activation(loss.mlm_head, config),
        top_k=top_k,
        projection_dim=projection_dim,
        activation=activation,
        chunk_size=chunk_size,
        token_rules=loss.token_rules,
    )
    model = SentenceTransformer(
        modules=[transformer, pooling],
        similarity_fn_name="dot",
        model_card_data=carried_over_card_data(loss.model.model_card_data),
    )
    return model.to(next(transformer.parameters()).device)
