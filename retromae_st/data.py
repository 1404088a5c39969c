"""Getting a text column ready for RetroMAE-style pre-training."""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from datasets import Dataset, Features, IterableDataset, Value, load_dataset

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


# Streaming corpora ------------------------------------------------------------------------------

#: Special-token spellings of BERT/RoBERTa tokenizers; a row made only of these has no text to learn.
SPECIAL_TOKEN_TEXTS = (
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[PAD]",
    "[UNK]",
    "<s>",
    "</s>",
    "<mask>",
    "<pad>",
    "<unk>",
)
_SPECIAL_TOKEN_PATTERN = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKEN_TEXTS))
_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json"}


def _is_invisible(char: str) -> bool:
    # Control characters (except whitespace) and format characters: zero-width spaces/joiners,
    # byte-order marks, bidirectional (RTL/LTR) overrides and isolates.
    category = unicodedata.category(char)
    return (category == "Cc" and char not in "\t\n\r") or category == "Cf"


def clean_text(value: object, row: int, column: str, max_chars: int | None) -> tuple[str | None, str | None]:
    """One row's text cleaned for training, or ``(None, reason)`` when the row has to be dropped.

    Raises:
        TypeError: the value is neither text nor missing (naming ``row`` and ``column``).
    """
    if value is None:
        return None, "missing (None)"
    if not isinstance(value, str):
        raise TypeError(
            f"column {column!r} must hold text, but row {row} is {type(value).__name__}: {value!r:.80}"
        )
    if "\ufffd" in value:
        return None, "undecodable bytes (not UTF-8)"
    if any(_is_invisible(char) for char in value):
        # Deleted, as BERT's own text cleaning does; tokenizers without that cleaning get the same text.
        value = "".join(char for char in value if not _is_invisible(char))
    if not value.strip():
        return None, "empty or whitespace-only"
    if not _SPECIAL_TOKEN_PATTERN.sub("", value).strip():
        return None, "only special-token text"
    if max_chars is not None and len(value) > max_chars:
        # Tokenising a 100k-character line costs time and memory for tokens that truncation drops.
        value = value[:max_chars]
    return value, None


def clean_text_stream(
    dataset: IterableDataset, column: str = "text", max_chars: int | None = 20_000
) -> tuple[IterableDataset, DroppedRows]:
    """Lazily cleans and filters a streamed text column (see :func:`clean_text`).

    Rows are dropped as the stream is read, so the returned :class:`DroppedRows` fills up during
    training (read it after ``trainer.train()``); each new drop reason is logged once with its row.
    A value that is neither text nor ``None`` raises a ``TypeError`` naming the row.
    """
    if not isinstance(dataset, IterableDataset):
        raise TypeError(f"dataset must be a datasets.IterableDataset, got {type(dataset).__name__}")
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1
    ):
        raise ValueError(f"max_chars must be a positive int or None, got {max_chars!r}")
    if dataset.column_names is not None:
        if column not in dataset.column_names:
            raise ValueError(f"dataset has no column {column!r}; its columns are {dataset.column_names}")
        dataset = dataset.select_columns([column])
    dropped = DroppedRows()

    def clean(example: dict, row: int) -> dict:
        text, reason = clean_text(example[column], row, column, max_chars)
        if reason is not None:
            if not dropped.reasons[reason]:
                logger.warning(
                    "Dropping row %d of the text corpus: %s (further such rows are counted)", row, reason
                )
            dropped.reasons[reason] += 1
        return {column: text}

    features = Features({column: Value("string")})  # the trainer needs to know the streamed columns
    cleaned = dataset.map(clean, with_indices=True, features=features).filter(
        lambda example: example[column] is not None
    )
    return cleaned, dropped


def load_text_corpus(
    data_files: str | os.PathLike | list[str | os.PathLike],
    column: str = "text",
    max_chars: int | None = 20_000,
) -> tuple[IterableDataset, DroppedRows]:
    """Streams a local corpus (``.txt``: one passage per line; ``.jsonl``: one object per line) without
    loading it into memory, cleaned lazily by :func:`clean_text_stream`.

    Lines of a text file that are not valid UTF-8 are dropped (and counted) instead of stopping the
    run. Train with ``max_steps`` set, as for any ``IterableDataset``.

    Example:
        ::

            train_dataset, dropped = load_text_corpus("corpus.txt")
            trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
            trainer.train()
            print(f"dropped rows: {dropped}")
    """
    files = [
        os.fspath(path) for path in (data_files if isinstance(data_files, (list, tuple)) else [data_files])
    ]
    if not files:
        raise ValueError("data_files is empty")
    formats = set()
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data_files: no such file {path!r}")
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in _FORMATS:
            raise ValueError(
                f"data_files: {path!r} is neither .txt nor .jsonl (supported: {sorted(_FORMATS)})"
            )
        formats.add(_FORMATS[suffix])
    if len(formats) > 1:
        raise ValueError("data_files mixes .txt and .jsonl files; stream each kind separately")
    builder = formats.pop()
    # "replace" marks undecodable bytes with U+FFFD, which clean_text drops (counted) row by row.
    dataset = load_dataset(
        builder, data_files=files, split="train", streaming=True, encoding_errors="replace"
    )
    if builder == "text" and column != "text":
        dataset = dataset.rename_column("text", column)
    return clean_text_stream(dataset, column, max_chars)
