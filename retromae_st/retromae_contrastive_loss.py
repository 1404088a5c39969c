from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence, Sized
from typing import Any, Literal

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import embed_columns, merge_feature_batches
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.util import cos_sim, get_world_size
from torch import Tensor, nn

from retromae_st.checkpointing import TrainableLossMixin, _running_trainer
from retromae_st.retromae_loss import RetroMAELoss

MAEColumns = Literal["all", "anchor", "documents"] | Sequence[int]
MAE_COLUMN_CHOICES = ("all", "anchor", "documents")


def check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a non-negative float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite, non-negative float, got {value}")
    return float(value)


def build_mae_loss(model: SentenceTransformer, mae_loss: RetroMAELoss | str | None) -> RetroMAELoss:
    """The MAE term's loss: an instance as given, or a default one picked by name."""
    if mae_loss is None or mae_loss == "retromae":
        return RetroMAELoss(model)
    if mae_loss == "dupmae":
        try:
            from retromae_st.dupmae_loss import DupMAELoss
        except ImportError as error:
            raise ValueError(
                "mae_loss='dupmae' needs retromae_st.DupMAELoss, which this install lacks"
            ) from error
        return DupMAELoss(model)
    if isinstance(mae_loss, str):
        raise ValueError(
            f"mae_loss must be 'retromae', 'dupmae' or a RetroMAELoss instance, got {mae_loss!r}"
        )
    if not isinstance(mae_loss, RetroMAELoss):
        raise TypeError(
            f"mae_loss must be a RetroMAELoss (or subclass) instance, got {type(mae_loss).__name__}"
        )
    return mae_loss


def check_mae_columns(mae_columns: MAEColumns) -> str | tuple[int, ...]:
    if isinstance(mae_columns, str):
        if mae_columns not in MAE_COLUMN_CHOICES:
            raise ValueError(
                f"mae_columns must be one of {MAE_COLUMN_CHOICES} or column indices, got {mae_columns!r}"
            )
        return mae_columns
    columns = tuple(mae_columns)
    if not columns or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in columns):
        raise ValueError(
            f"mae_columns must be a non-empty sequence of column indices >= 0, got {mae_columns!r}"
        )
    if len(set(columns)) != len(columns):
        raise ValueError(f"mae_columns lists a column twice: {mae_columns!r}")
    return columns


class RetroMAEContrastiveLoss(TrainableLossMixin, nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        mae_loss: RetroMAELoss | Literal["retromae", "dupmae"] | None = None,
        contrastive_loss: MultipleNegativesRankingLoss | None = None,
        mae_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        scale: float | None = None,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None = None,
        gather_across_devices: bool | None = None,
        mae_columns: MAEColumns = "all",
    ) -> None:
        """
        Continued RetroMAE pre-training and contrastive learning in one loss: the second stage of the
        two-stage recipe of "Masked Autoencoders As The Unified Learners For Pre-Trained Sentence
        Representation". On (anchor, positive[, negative...]) batches it adds

        - a contrastive term: InfoNCE with in-batch negatives (plus the hard negatives of the batch) on
          the unmasked ``[CLS]`` embeddings, computed by sentence-transformers'
          :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss`;
        - an MAE term: the RetroMAE (or DupMAE) reconstruction losses of ``mae_loss`` on the texts of
          the same batch (the columns chosen by ``mae_columns``), each masked on its own.

        Loss = ``contrastive_weight * contrastive + mae_weight * sum(MAE terms)``. The returned dict holds
        every weighted term under its own name (``"contrastive"``, ``"encoder_mlm"``, ``"decoder_mlm"``,
        plus e.g. DupMAE's bag-of-words term), so the trainer logs each. A weight of 0 skips its term.

        Args:
            model: A SentenceTransformer with CLS pooling (see :func:`retromae_st.load_cls_model`).
            mae_loss: The MAE term: a :class:`retromae_st.RetroMAELoss` (or subclass, such as
                ``DupMAELoss``) on the same ``model``, with its own masking ratios; or ``"retromae"`` /
                ``"dupmae"`` for one with default settings. Default: ``RetroMAELoss(model)``. Its decoder
                and MLM head are trained and checkpointed with this loss; pass the same instance to
                several losses (one per dataset) to share one decoder between datasets.
            contrastive_loss: The contrastive term, a ``MultipleNegativesRankingLoss`` on the same
                ``model``. Default: ``MultipleNegativesRankingLoss(model, scale, similarity_fct,
                gather_across_devices)``.
            mae_weight: Weight of every MAE term; 0 turns the MAE term off.
            contrastive_weight: Weight of the contrastive term; 0 turns it off.
            scale: ``1 / temperature`` of the contrastive term (default 20.0, i.e. temperature 0.05).
                Only when ``contrastive_loss`` is not given.
            similarity_fct: Similarity of the contrastive term (default ``cos_sim``). Only when
                ``contrastive_loss`` is not given.
            gather_across_devices: Whether the contrastive term uses the embeddings of every device as
                negatives (default False). Only when ``contrastive_loss`` is not given. The MAE term has
                no interaction between texts and is always computed per device.
            mae_columns: Which texts get the MAE term: ``"all"`` (default: every column, so that all
                stage-2 text keeps being reconstructed; right for NLI, whose columns are all sentences),
                ``"anchor"`` (the first column), ``"documents"`` (every column but the anchor: skips short
                search queries, which give the decoder little to rebuild, and halves the MAE cost on
                query-passage data), or a sequence of column indices.

        References:
            - Masked Autoencoders As The Unified Learners For Pre-Trained Sentence Representation
              (Liu et al., 2022): https://arxiv.org/abs/2208.00231
            - RetroMAE (Xiao et al., EMNLP 2022): https://arxiv.org/abs/2205.12035

        Requirements:
            1. A model that :class:`retromae_st.RetroMAELoss` accepts (BERT-family, CLS pooling).
            2. Batches of at least 2 rows (in-batch negatives), text columns only, no label column.

        Inputs:
            +-------------------------------------------------+--------+
            | Texts                                           | Labels |
            +=================================================+========+
            | (anchor, positive) pairs                        | none   |
            +-------------------------------------------------+--------+
            | (anchor, positive, negative) triplets           | none   |
            +-------------------------------------------------+--------+
            | (anchor, positive, negative_1, ..., negative_n) | none   |
            +-------------------------------------------------+--------+

        Recommendations:
            - Use ``BatchSamplers.NO_DUPLICATES`` so that no in-batch negative repeats a text of its row,
              and ``dataloader_drop_last=True`` so that no batch has a single row.

        Relations:
            - With ``mae_weight=0`` this is ``MultipleNegativesRankingLoss``; with ``contrastive_weight=0``
              it is ``mae_loss`` applied to the chosen columns.

        Example:
            ::

                from datasets import Dataset, DatasetDict
                from sentence_transformers import SentenceTransformerTrainer
                from retromae_st import RetroMAEContrastiveLoss, RetroMAELoss, load_cls_model

                model = load_cls_model("stage1-retromae/masked_lm", max_seq_length=256)
                mae = RetroMAELoss(model)  # one decoder shared by both datasets
                train_dataset = DatasetDict({
                    "msmarco": Dataset.from_dict({"query": [...], "passage": [...]}),
                    "nli": Dataset.from_dict({"anchor": [...], "positive": [...], "negative": [...]}),
                })
                loss = {
                    "msmarco": RetroMAEContrastiveLoss(model, mae, mae_columns="documents"),
                    "nli": RetroMAEContrastiveLoss(model, mae),
                }
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        self.mae_weight = check_weight("mae_weight", mae_weight)
        self.contrastive_weight = check_weight("contrastive_weight", contrastive_weight)
        if self.mae_weight == 0 and self.contrastive_weight == 0:
            raise ValueError("mae_weight and contrastive_weight are both 0: there is nothing to train")
        self.mae_columns = check_mae_columns(mae_columns)
        self.model = model
        self.mae_loss = build_mae_loss(model, mae_loss)
        self.contrastive_loss = self._build_contrastive_loss(
            model, contrastive_loss, scale, similarity_fct, gather_across_devices
        )
        for name, loss in (("mae_loss", self.mae_loss), ("contrastive_loss", self.contrastive_loss)):
            if loss.model is not model:
                raise ValueError(
                    f"{name} was built on another model: pass the same SentenceTransformer to both"
                )

    @staticmethod
    def _build_contrastive_loss(
        model: SentenceTransformer,
        contrastive_loss: MultipleNegativesRankingLoss | None,
        scale: float | None,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None,
        gather_across_devices: bool | None,
    ) -> MultipleNegativesRankingLoss:
        if contrastive_loss is None:
            return MultipleNegativesRankingLoss(
                model,
                scale=20.0 if scale is None else scale,
                similarity_fct=cos_sim if similarity_fct is None else similarity_fct,
                gather_across_devices=bool(gather_across_devices),
            )
        if not isinstance(contrastive_loss, MultipleNegativesRankingLoss):
            raise TypeError(
                f"contrastive_loss must be a MultipleNegativesRankingLoss, got {type(contrastive_loss).__name__}"
            )
        given = [
            name
            for name, value in (
                ("scale", scale),
                ("similarity_fct", similarity_fct),
                ("gather_across_devices", gather_across_devices),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} configure the default contrastive loss; set them on the given "
                "contrastive_loss instead"
            )
        return contrastive_loss

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        columns = self.check_batch(sentence_features, labels)
        if self.training:
            self._attach_to_running_trainer()
            self._check_last_batch_of_running_trainer()
        terms = {}
        if self.contrastive_weight:
            terms["contrastive"] = self.contrastive_weight * self.contrastive_term(columns)
        if self.mae_weight:
            for name, value in self.mae_terms(columns).items():
                terms[name] = self.mae_weight * value
        return terms

    def contrastive_term(self, columns: list[dict[str, Tensor]]) -> Tensor:
        """InfoNCE on the unmasked ``[CLS]`` embeddings, by the wrapped ``MultipleNegativesRankingLoss``."""
        embeddings = embed_columns(self.model, columns)
        return self.contrastive_loss.compute_loss_from_embeddings(embeddings, None)

    def mae_terms(self, columns: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The MAE losses of the chosen columns, masked and reconstructed as one batch."""
        chosen = [columns[i] for i in self.mae_column_indices(len(columns))]
        merged = chosen[0] if len(chosen) == 1 else merge_feature_batches(chosen)
        if merged is None:
            # Columns that cannot share a batch (e.g. different prompts): the mean of per-column terms.
            per_column = [self._mae_terms_of(features) for features in chosen]
            return {name: torch.stack([t[name] for t in per_column]).mean() for name in per_column[0]}
        return self._mae_terms_of(merged)

    def _mae_terms_of(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        self.mae_loss.check_has_content(features)
        if not self.mae_loss.has_something_to_reconstruct(features):
            return self.mae_loss.skipped_batch_terms()
        # This loss's own masking stream (per rank, checkpointed with this loss's state).
        masks = self.mae_loss.make_masks(features, self.mask_generator(features["input_ids"].device))
        return self.mae_loss.compute_loss_terms(features, masks)

    def mae_column_indices(self, num_columns: int) -> list[int]:
        if self.mae_columns == "all":
            return list(range(num_columns))
        if self.mae_columns == "anchor":
            return [0]
        if self.mae_columns == "documents":
            return list(range(1, num_columns))
        if max(self.mae_columns) >= num_columns:
            raise ValueError(
                f"mae_columns={list(self.mae_columns)} names column {max(self.mae_columns)}, but the batch has "
                f"only {num_columns} columns"
            )
        return list(self.mae_columns)

    def check_batch(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None
    ) -> list[dict[str, Tensor]]:
        """The batch's text columns, checked: 2+ tokenised columns of one size >= 2, no labels."""
        name = type(self).__name__
        columns = list(sentence_features)
        if len(columns) < 2:
            raise ValueError(
                f"{name} takes (anchor, positive[, negative, ...]) text columns, but the batch has "
                f"{len(columns)} column(s). For plain text use RetroMAELoss."
            )
        if labels is not None:
            raise ValueError(
                f"{name} takes no labels, but the dataset has a 'label' column. Remove it; for NLI data, "
                "build (anchor, entailment, contradiction) triplets instead of labelled pairs."
            )
        for index, features in enumerate(columns):
            if "input_ids" not in features or "attention_mask" not in features:
                raise ValueError(f"{name} needs tokenised text (input_ids, attention_mask) in column {index}")
        sizes = [features["input_ids"].size(0) for features in columns]
        if len(set(sizes)) != 1:
            raise ValueError(f"{name}: the columns of a batch must have as many rows each, got {sizes}")
        if sizes[0] == 0:
            raise ValueError(f"{name} got an empty batch (0 rows); check the dataset's filtering")
        if self.contrastive_weight and sizes[0] * self._contrastive_world_size() < 2:
            raise ValueError(
                f"{name} got a batch of 1 row: the contrastive term has no in-batch negatives, and training on "
                "it would teach nothing. Use batches of 2+ rows; set dataloader_drop_last=True so that the last "
                "batch of an epoch is not a single leftover row."
            )
        return columns

    def _check_last_batch_of_running_trainer(self) -> None:
        """Fails on the first step, not at the end of an epoch, when the data leaves a last batch of 1 row.

        Only for the default batch sampler on one process, where the batch sizes are known in advance.
        """
        trainer = _running_trainer()
        if trainer is None or trainer is getattr(self, "_checked_trainer", None):
            return
        self._checked_trainer = trainer
        args = trainer.args
        if (
            args.dataloader_drop_last
            or not self.contrastive_weight
            or args.world_size != 1
            or args.batch_sampler != BatchSamplers.BATCH_SAMPLER
        ):
            return
        name, dataset = None, trainer.train_dataset
        if isinstance(trainer.loss, dict):
            name = next((key for key, loss in trainer.loss.items() if loss is self), None)
            dataset = dataset.get(name) if name is not None and isinstance(dataset, dict) else None
        if not isinstance(dataset, Sized) or isinstance(dataset, dict):
            return
        batch_size = args.per_device_train_batch_size
        if len(dataset) % batch_size == 1:
            which = f"dataset {name!r}" if name else "the training dataset"
            raise ValueError(
                f"{which} has {len(dataset)} rows: with per_device_train_batch_size={batch_size} the last batch of "
                f"every epoch is a single row, which has no in-batch negatives for {type(self).__name__}. "
                "Set dataloader_drop_last=True (or change the batch size)."
            )

    def _contrastive_world_size(self) -> int:
        return get_world_size() if self.contrastive_loss.gather_across_devices else 1

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "mae_loss": type(self.mae_loss).__name__,
            **{f"mae_{key}": value for key, value in self.mae_loss.get_config_dict().items()},
            **{f"contrastive_{key}": value for key, value in self.contrastive_loss.get_config_dict().items()},
            "mae_weight": self.mae_weight,
            "contrastive_weight": self.contrastive_weight,
            "mae_columns": self.mae_columns if isinstance(self.mae_columns, str) else list(self.mae_columns),
        }

    @property
    def citation(self) -> str:
        return (
            """
@misc{liu2022maeunified,
    title = {Masked Autoencoders As The Unified Learners For Pre-Trained Sentence Representation},
    author = {Liu, Alexander and Yang, Samuel},
    year = {2022},
    eprint = {2208.00231},
    archivePrefix = {arXiv},
    url = {https://arxiv.org/abs/2208.00231},
}
"""
            + self.mae_loss.citation
        )
