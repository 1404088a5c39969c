"""Getting a text column ready for RetroMAE-style pre-training."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from datasets import Dataset

logger = logging.getLogger(__name__)


@dataclass
class DroppedRows:
    """How many rows :func:`prepare_text_dataset` dropped, by reason."""

    reasons: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def __str__(self) -> str:
        if not self.total:
            return "no rows dropped"
        return ", ".join(f"{count} {reason}" for reason, count in self.reasons.most_common())


def _check_column(dataset: Dataset, column: str) -> None:
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
    if column not in dataset.column_names:
        raise ValueError(f"dataset has no column {column!r}; its columns are {dataset.column_names}")


def _check_text_values(dataset: Dataset, column: str) -> None:
    for row, value in enumerate(dataset[column]):
        if value is not None and not isinstance(value, str):
            raise TypeError(
                f"column {column!r} must hold text, but row {row} is {type(value).__name__}: {value!r:.80}"
            )


def prepare_text_dataset(dataset: Dataset, column: str = "text") -> tuple[Dataset, DroppedRows]:
    """Keeps only ``column``, checks it holds text, and drops rows with nothing to reconstruct.

    Rows that are ``None``, empty or whitespace-only are dropped and counted; any other non-string
    value is an error naming the row. The losses train on whatever the trainer hands them, so clean
    the data here rather than have a batch of empty texts stop a long run.

    Returns:
        The cleaned single-column dataset, and the count of dropped rows by reason.
    """
    _check_column(dataset, column)
    _check_text_values(dataset, column)
    dataset = dataset.select_columns([column])
    dropped = DroppedRows()
    keep = []
    for row, value in enumerate(dataset[column]):
        if value is None:
            dropped.reasons["missing (None)"] += 1
        elif not value.strip():
            dropped.reasons["empty or whitespace-only"] += 1
        else:
            keep.append(row)
    if not keep:
        raise ValueError(f"column {column!r} has no non-empty text ({dropped})")
    if dropped.total:
        logger.warning("prepare_text_dataset dropped %d of %d rows: %s", dropped.total, len(dataset), dropped)
        dataset = dataset.select(keep)
    return dataset, dropped


def prepare_contrastive_dataset(
    dataset: Dataset, columns: list[str] | None = None
) -> tuple[Dataset, DroppedRows]:
    """Keeps the (anchor, positive[, negative...]) ``columns`` (default: all, in order), for
    :class:`retromae_st.RetroMAEContrastiveLoss`: checks that they hold text and drops the rows in which
    any of them is ``None``, empty or whitespace-only (counted). A non-string value is an error naming its
    column and row, so is a ``label`` column or a dataset left with fewer than 2 rows.

    Returns:
        The cleaned dataset, and the count of dropped rows by reason.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
    columns = list(dataset.column_names if columns is None else columns)
    if "label" in columns:
        raise ValueError(
            "RetroMAEContrastiveLoss takes no labels: drop the 'label' column (for NLI, build "
            "(anchor, entailment, contradiction) triplets instead of labelled pairs)"
        )
    if len(columns) < 2:
        raise ValueError(f"need (anchor, positive[, negative...]) text columns, got {columns}")
    for column in columns:
        _check_column(dataset, column)
        _check_text_values(dataset, column)
    dataset = dataset.select_columns(columns)
    dropped = DroppedRows()
    keep = []
    for row, values in enumerate(zip(*(dataset[column] for column in columns), strict=True)):
        if any(value is None for value in values):
            dropped.reasons["missing (None)"] += 1
        elif any(not value.strip() for value in values):
            dropped.reasons["empty or whitespace-only"] += 1
        else:
            keep.append(row)
    if len(keep) < 2:
        raise ValueError(
            f"{len(keep)} row(s) left after dropping empty texts ({dropped}): contrastive learning needs at "
            "least 2 rows for in-batch negatives"
        )
    if dropped.total:
        logger.warning(
            "prepare_contrastive_dataset dropped %d of %d rows: %s", dropped.total, len(dataset), dropped
        )
        dataset = dataset.select(keep)
    return dataset, dropped
