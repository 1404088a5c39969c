from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from torch import nn

from retromae_st.checkpointing import TrainableLossMixin, unwrap_model
from retromae_st.decoder import EnhancedDecoderLayer, load_saved_decoder
from retromae_st.masking import (
    RetroMAEMasks,
    boundary_token_table,
    check_token_rules,
    decoder_targets,
    retromae_masks,
    special_token_table,
    word_start_table,
)
from retromae_st.mlm_head import build_mlm_head, masked_lm_loss

logger = logging.getLogger(__name__)


def has_position_table(encoder: nn.Module) -> bool:
    """Whether the encoder adds learned absolute position embeddings (BERT, RoBERTa, XLM-R; not ModernBERT)."""
    return isinstance(getattr(encoder.embeddings, "position_embeddings", None), nn.Embedding)


def check_ratio(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1), got {type(value).__name__}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return float(value)


class RetroMAELoss(TrainableLossMixin, nn.Module):
    #: The names of the terms :meth:`compute_loss_terms` returns.
    term_names: tuple[str, ...] = ("encoder_mlm", "decoder_mlm")

    def __init__(
        self,
        model: SentenceTransformer,
        encoder_mask_ratio: float = 0.3,
        decoder_mask_ratio: float = 0.5,
        decoder_pool_size: int = 256,
        token_rules: str = "authors",
    ) -> None:
        """
        RetroMAE pre-training: a masked auto-encoder whose decoder must rebuild the input from the
        encoder's ``[CLS]`` sentence embedding. The encoder (the SentenceTransformer's own Transformer)
        reads the input with a moderate whole-word mask and is trained with MLM; a one-layer decoder
        owned by this loss reads the ``[CLS]`` embedding plus an aggressively masked view of the input
        ("enhanced decoding") and is trained to reconstruct every token. Loss = encoder MLM + decoder MLM.

        Behaviour follows the authors' code (GitHub staoxiao/RetroMAE, ``src/pretrain``):

        - encoder: whole-word masking at ``encoder_mask_ratio`` with BERT's 80/10/10 corruption;
        - decoder query stream = ``[CLS]`` embedding + position embeddings; key/value stream =
          ``[CLS]`` embedding followed by the (unmasked) token embeddings of positions ``1..L-1``;
        - decoder attention: per example a pool of ``min(len, decoder_pool_size)`` whole-word masks at
          ``decoder_mask_ratio``; each position picks one at random and never sees itself;
        - decoder labels: every position but the first and the last of a row (``[CLS]``, ``[SEP]``);
          both heads are the checkpoint's MLM head;
        - token rules (``token_rules="authors"``): ``[UNK]`` and any other special id inside the text is a
          word, as in their collator: it uses up encoder mask budget (and then stays unmasked, without a
          label), is hidden from the decoder at the decoder ratio and is predicted by the decoder.
          ``token_rules="skip_special"`` keeps every special token out of masking, hiding and prediction
          (the rule of earlier versions of this package; see ``docs/faithfulness.md`` for its measured effect).

        Deliberate differences, tested to give the same loss (``tests/test_equivalence.py``): masks are built
        on the batch's device by vectorised tensor code instead of a per-example Python collator; MLM logits
        are computed only at labelled positions; padded query rows are shown ``[CLS]`` so that no attention
        row is empty. A batch with nothing to reconstruct (no decoder label under the token rules) is a
        zero-gradient step with a counted warning instead of an error (the authors' loss would be NaN).

        Args:
            model: A SentenceTransformer whose first module is a BERT-family ``Transformer`` and whose
                second is ``Pooling(pooling_mode="cls")`` (see :func:`retromae_st.load_cls_model`).
            encoder_mask_ratio: Fraction of tokens masked in the encoder input (paper: 0.15-0.3).
            decoder_mask_ratio: Fraction of tokens each decoder position cannot see (paper: 0.5-0.7).
            decoder_pool_size: Number of decoder masks drawn per example; query rows sample from this
                pool (the authors' collator uses 256).
            token_rules: ``"authors"`` (default): the authors' collator's treatment of ``[UNK]`` and other
                special ids inside the text (words for masking, hiding and prediction); ``"skip_special"``:
                special tokens are never masked, hidden or predicted.

        References:
            - RetroMAE: Pre-Training Retrieval-oriented Language Models Via Masked Auto-Encoder
              (Xiao et al., EMNLP 2022): https://arxiv.org/abs/2205.12035
            - Code: https://github.com/staoxiao/RetroMAE

        Requirements:
            1. A BERT-family encoder with a WordPiece/BPE/SentencePiece tokenizer that has a mask token.
            2. CLS pooling: the sentence embedding is the encoder's final ``[CLS]`` hidden state.

        Inputs:
            +-----------------+--------+
            | Texts           | Labels |
            +=================+========+
            | (text)          | none   |
            +-----------------+--------+

        Relations:
            - :class:`retromae_st.DupMAELoss` adds DupMAE's bag-of-words task to this loss.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer
                from retromae_st import RetroMAELoss, load_cls_model

                model = load_cls_model("bert-base-uncased", max_seq_length=256)
                train_dataset = Dataset.from_dict({"text": ["First passage.", "Second passage."]})
                loss = RetroMAELoss(model)
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        self.encoder_mask_ratio = check_ratio("encoder_mask_ratio", encoder_mask_ratio)
        self.decoder_mask_ratio = check_ratio("decoder_mask_ratio", decoder_mask_ratio)
        if (
            isinstance(decoder_pool_size, bool)
            or not isinstance(decoder_pool_size, int)
            or decoder_pool_size < 1
        ):
            raise ValueError(f"decoder_pool_size must be a positive int, got {decoder_pool_size!r}")
        self.decoder_pool_size = decoder_pool_size
        self.token_rules = check_token_rules(token_rules)

        transformer = self._check_model(model)
        self.model = model
        tokenizer = transformer.tokenizer
        encoder = transformer.auto_model
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        # Encoders without an absolute position table (ModernBERT) give the decoder a learned one of its own.
        self.decoder = EnhancedDecoderLayer.from_config(
            encoder.config, own_positions=not has_position_table(encoder)
        )
        load_saved_decoder(self.decoder, encoder.name_or_path)
        self.mlm_head = build_mlm_head(encoder.config, encoder.get_input_embeddings(), encoder.name_or_path)
        self.register_buffer("word_starts", word_start_table(tokenizer), persistent=False)
        self.register_buffer("special_tokens", special_token_table(tokenizer), persistent=False)
        self.register_buffer("boundary_tokens", boundary_token_table(tokenizer), persistent=False)
        #: Warn (once) when a batch's texts reach max_seq_length: they may have been truncated. Off for
        #: packed blocks (:func:`retromae_st.pack_corpus`), which fill it exactly and lose nothing.
        self.warn_on_full_length = True
        self._warned_full_length = False
        self.skipped_batches = 0  #: batches with nothing to reconstruct, trained as zero-gradient steps

    @staticmethod
    def _check_model(model: SentenceTransformer) -> Transformer:
        if not isinstance(model, SentenceTransformer):
            raise TypeError(f"model must be a SentenceTransformer, got {type(model).__name__}")
        modules = list(model)
        if not modules or not isinstance(modules[0], Transformer):
            raise ValueError("model's first module must be a sentence_transformers Transformer")
        transformer = modules[0]
        encoder = transformer.auto_model
        word_embeddings = encoder.get_input_embeddings() if hasattr(encoder, "get_input_embeddings") else None
        if not isinstance(getattr(encoder, "embeddings", None), nn.Module) or not isinstance(
            word_embeddings, nn.Embedding
        ):
            raise ValueError(
                f"{type(encoder).__name__} is not a supported encoder: RetroMAE needs an `embeddings` module and "
                "word embeddings (`get_input_embeddings()`), as BERT, RoBERTa, XLM-RoBERTa and ModernBERT have"
            )
        hidden_size = getattr(encoder.config, "hidden_size", None)
        if word_embeddings.embedding_dim != hidden_size:
            raise ValueError(
                f"{type(encoder).__name__} embeds tokens in {word_embeddings.embedding_dim} dimensions but its hidden "
                f"size is {hidden_size}: RetroMAE's decoder adds the sentence embedding to the token embeddings, "
                "so they must have the same width (e.g. ELECTRA with embedding_size != hidden_size is not supported)"
            )
        if transformer.tokenizer is None or transformer.tokenizer.mask_token_id is None:
            raise ValueError("model's tokenizer has no mask token, which masked auto-encoding needs")
        pooling = modules[1] if len(modules) > 1 else None
        if not isinstance(pooling, Pooling) or pooling.pooling_mode != "cls":
            raise ValueError(
                "RetroMAE trains the [CLS] embedding: model's second module must be "
                "Pooling(pooling_mode='cls'). Build one with retromae_st.load_cls_model(path)."
            )
        return transformer

    @property
    def transformer(self) -> Transformer:
        return unwrap_model(self.model)[0]

    def forward(
        self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: Any = None
    ) -> dict[str, torch.Tensor]:
        features = self.text_features(sentence_features)
        if self.training:
            self._attach_to_running_trainer()
        if not self.has_something_to_reconstruct(features):
            return self.skipped_batch_terms()
        masks = self.make_masks(features, self.mask_generator(features["input_ids"].device))
        return self.compute_loss_terms(features, masks)

    def has_something_to_reconstruct(self, features: dict[str, torch.Tensor]) -> bool:
        """Whether any row of the batch has a decoder target under the token rules (one host synchronisation)."""
        targets = decoder_targets(
            features["input_ids"], features["attention_mask"], self.special_tokens, self.token_rules
        )
        return bool(targets.any())

    def skipped_batch_terms(self) -> dict[str, torch.Tensor]:
        """Zero-valued terms for a batch with nothing to reconstruct, connected to every trainable parameter
        (zero gradients), so that the step, gradient accumulation and distributed gradient reduction go on as
        usual; counted in :attr:`skipped_batches`, with a warning at the 1st, 2nd, 4th, 8th, ... such batch."""
        self.skipped_batches += 1
        if self.skipped_batches & (self.skipped_batches - 1) == 0:
            logger.warning(
                "%s: a batch has nothing to reconstruct (every text is only special tokens under "
                "token_rules=%r); it is trained as a zero-gradient step (%d such batch(es) so far). "
                "prepare_text_dataset(..., tokenizer=model.tokenizer) drops such rows up front.",
                type(self).__name__,
                self.token_rules,
                self.skipped_batches,
            )
        zero = sum(parameter.sum() for parameter in self.parameters() if parameter.requires_grad) * 0.0
        return dict.fromkeys(self.term_names, zero)

    def compute_loss_terms(
        self, features: dict[str, torch.Tensor], masks: RetroMAEMasks
    ) -> dict[str, torch.Tensor]:
        """Encoder and decoder MLM losses of a batch under the given masks."""
        token_embeddings = self.encode(features, masks.encoder_input_ids)
        return {
            "encoder_mlm": masked_lm_loss(self.mlm_head, token_embeddings, masks.encoder_labels),
            "decoder_mlm": self.decoder_loss(token_embeddings[:, 0], features["input_ids"], masks),
        }

    def text_features(self, sentence_features: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The one text column of the batch, checked for content."""
        sentence_features = list(sentence_features)
        if len(sentence_features) != 1:
            raise ValueError(
                f"{type(self).__name__} takes a dataset with exactly one text column, but the batch has "
                f"{len(sentence_features)} columns. Remove the other columns (dataset.select_columns(['text']))."
            )
        features = sentence_features[0]
        if "input_ids" not in features or "attention_mask" not in features:
            raise ValueError(
                f"{type(self).__name__} needs tokenised text (input_ids, attention_mask) in its column"
            )
        self.check_has_content(features)
        return features

    def check_has_content(self, features: dict[str, torch.Tensor]) -> None:
        """Checks a batch's content: warns once when texts reach ``max_seq_length`` (they may have been
        truncated; not for packed blocks, see ``warn_on_full_length``).
        A batch with nothing to reconstruct is not an error (see :meth:`skipped_batch_terms`)."""
        input_ids, attention_mask = features["input_ids"], features["attention_mask"]
        max_length = self.transformer.max_seq_length
        warn = self.warn_on_full_length and not self._warned_full_length
        if warn and max_length and input_ids.size(1) >= max_length:
            if bool((attention_mask.sum(dim=1) >= max_length).any()):
                self._warned_full_length = True
                logger.warning(
                    "Some texts reach max_seq_length=%d: any text longer than that was truncated and its rest is "
                    "not trained on. Pack the corpus (retromae_st.pack_corpus; pretrain does by default), raise "
                    "model.max_seq_length or split long documents into passages.",
                    max_length,
                )

    def make_masks(
        self, features: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> RetroMAEMasks:
        return retromae_masks(
            features["input_ids"],
            features["attention_mask"],
            self.word_starts,
            self.special_tokens,
            mask_token_id=self.mask_token_id,
            vocab_size=self.vocab_size,
            encoder_mask_ratio=self.encoder_mask_ratio,
            decoder_mask_ratio=self.decoder_mask_ratio,
            decoder_pool_size=self.decoder_pool_size,
            generator=generator,
            token_rules=self.token_rules,
            boundary=self.boundary_tokens,
        )

    def encode(self, features: dict[str, torch.Tensor], encoder_input_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(B, L, H)`` of the encoder on the masked input."""
        encoder_features = {key: value for key, value in features.items() if key != "input_ids"}
        encoder_features["input_ids"] = encoder_input_ids
        return self.model(encoder_features)["token_embeddings"]

    def decoder_position_ids(self, length: int, device: torch.device) -> torch.Tensor:
        if self.decoder.position_embeddings is not None:
            return torch.arange(length, device=device)
        embeddings = self.transformer.auto_model.embeddings
        # RoBERTa-style embeddings count positions from padding_idx + 1.
        offset = getattr(embeddings, "padding_idx", None)
        start = offset + 1 if isinstance(offset, int) else 0
        return torch.arange(start, start + length, device=device)

    def decoder_positions(self, length: int, device: torch.device) -> torch.Tensor:
        """``(L, H)`` position embeddings of the decoder's query stream: the encoder's own table, or the
        decoder's learned one for an encoder without a table (our extension of the paper)."""
        table = self.decoder.position_embeddings
        if table is None:
            table = self.transformer.auto_model.embeddings.position_embeddings
        return table(self.decoder_position_ids(length, device))

    def decoder_token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L, H)`` embeddings of the unmasked input for the key/value stream: the encoder's embedding
        layer, to which the decoder's own positions are added first when the encoder has no table."""
        embeddings = self.transformer.auto_model.embeddings
        if self.decoder.position_embeddings is None:
            return embeddings(input_ids=input_ids)
        word_embeddings = self.transformer.auto_model.get_input_embeddings()(input_ids)
        positions = self.decoder_positions(input_ids.size(1), input_ids.device)
        return embeddings(inputs_embeds=word_embeddings + positions[None])

    def decoder_inputs(
        self, sentence_embedding: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The enhanced decoder's query stream and key/value stream, as in the authors' RetroMAE code."""
        token_embeddings = self.decoder_token_embeddings(input_ids)
        key_value = torch.cat([sentence_embedding[:, None], token_embeddings[:, 1:]], dim=1)
        positions = self.decoder_positions(input_ids.size(1), input_ids.device)
        query = positions[None] + sentence_embedding[:, None]
        return query, key_value

    def decoder_loss(
        self, sentence_embedding: torch.Tensor, input_ids: torch.Tensor, masks: RetroMAEMasks
    ) -> torch.Tensor:
        query, key_value = self.decoder_inputs(sentence_embedding, input_ids)
        hidden = self.decoder(query, key_value, masks.decoder_visible)
        # The decoder's labels cover nearly every real token. On an accelerator the head runs
        # at every position (a little extra work on those few) to spare a host synchronisation; on CPU a
        # synchronisation costs nothing, so only the labelled positions are computed.
        all_positions = hidden.device.type != "cpu"
        return masked_lm_loss(self.mlm_head, hidden, masks.decoder_labels, all_positions=all_positions)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "encoder_mask_ratio": self.encoder_mask_ratio,
            "decoder_mask_ratio": self.decoder_mask_ratio,
            "decoder_pool_size": self.decoder_pool_size,
            "token_rules": self.token_rules,
        }

    @property
    def citation(self) -> str:
        return """
@inproceedings{xiao2022retromae,
    title = "{R}etro{MAE}: Pre-Training Retrieval-oriented Language Models Via Masked Auto-Encoder",
    author = "Xiao, Shitao and Liu, Zheng and Shao, Yingxia and Cao, Zhao",
    booktitle = "Proceedings of the 2022 Conference on Empirical Methods in Natural Language Processing",
    year = "2022",
    url = "https://arxiv.org/abs/2205.12035",
}
"""
