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
