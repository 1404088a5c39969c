"""Getting a text column ready for RetroMAE-style pre-training."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from datasets import Dataset, Features, IterableDataset, Value, load_dataset
from transformers import PreTrainedTokenizerBase

from retromae_st._unicode import invisible_characters
from retromae_st.masking import check_token_rules

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


def prepare_text_dataset(
    dataset: Dataset,
    column: str = "text",
    max_chars: int | None = 20_000,
    tokenizer: PreTrainedTokenizerBase | None = None,
    token_rules: str = "authors",
    max_seq_length: int | None = None,
) -> tuple[Dataset, DroppedRows]:
    """Keeps only ``column``, checks it holds text, and cleans it as the streamed corpora are cleaned.

    Every row goes through :func:`clean_text`: rows that are ``None``, empty or whitespace-only, only
    special-token text, or hold undecodable bytes (U+FFFD) are dropped and counted; invisible control
    and format characters are deleted; texts are cut at ``max_chars`` characters (far beyond any
    ``max_seq_length``; tokenising the rest would cost time for tokens that truncation drops). Any
    other non-string value is an error naming the row. The losses train on whatever the trainer hands
    them, so clean the data here rather than have a batch of empty texts stop a long run.

    With a ``tokenizer`` (the model's), rows with nothing for the loss to reconstruct under its
    ``token_rules`` (within ``max_seq_length`` tokens, default the tokenizer's ``model_max_length`` up to
    512) are dropped and counted too: under ``"skip_special"`` a line that tokenises to nothing but
    ``[UNK]`` (e.g. emoji with an English vocabulary); under ``"authors"`` such a line is kept (its
    ``[UNK]`` are predicted), so only rows without any token are dropped.

    Returns:
        The cleaned single-column dataset, and the count of dropped rows by reason.
    """
    _check_column(dataset, column)
    _check_max_chars(max_chars)
    texts, dropped = _clean_columns(dataset, [column], max_chars)
    if tokenizer is not None:
        has_target = reconstruction_check(tokenizer, token_rules, max_seq_length)
        keep = has_target(texts[column])
        if not all(keep):
            dropped.reasons[NOTHING_TO_RECONSTRUCT] += keep.count(False)
        texts[column] = [text for text, kept in zip(texts[column], keep, strict=True) if kept]
    if not texts[column]:
        raise ValueError(f"column {column!r} has no non-empty text ({dropped})")
    if dropped.total:
        logger.warning("prepare_text_dataset dropped %d of %d rows: %s", dropped.total, len(dataset), dropped)
    return _with_columns(dataset, texts), dropped


def prepare_contrastive_dataset(
    dataset: Dataset, columns: list[str] | None = None, max_chars: int | None = 20_000
) -> tuple[Dataset, DroppedRows]:
    """Keeps the (anchor, positive[, negative...]) ``columns`` (default: all, in order), for
    :class:`retromae_st.RetroMAEContrastiveLoss`: checks that they hold text and cleans every one of them
    as :func:`prepare_text_dataset` does, dropping (and counting) a row when any of its texts has to be
    dropped. A non-string value is an error naming its column and row, so is a ``label`` column or a
    dataset left with fewer than 2 rows.

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
    _check_max_chars(max_chars)
    texts, dropped = _clean_columns(dataset, columns, max_chars)
    kept = len(texts[columns[0]])
    if kept < 2:
        raise ValueError(
            f"{kept} row(s) left after dropping empty texts ({dropped}): contrastive learning needs at "
            "least 2 rows for in-batch negatives"
        )
    if dropped.total:
        logger.warning(
            "prepare_contrastive_dataset dropped %d of %d rows: %s", dropped.total, len(dataset), dropped
        )
    return _with_columns(dataset, texts), dropped


#: The drop reason of rows whose tokens hold nothing for the loss to reconstruct.
NOTHING_TO_RECONSTRUCT = "nothing to reconstruct after tokenisation (e.g. only [UNK])"


def reconstruction_check(
    tokenizer: PreTrainedTokenizerBase, token_rules: str = "authors", max_seq_length: int | None = None
) -> Callable[[list[str]], list[bool]]:
    """A function telling, for a list of texts, which ones give the loss something to reconstruct under
    ``token_rules`` once tokenised and truncated to ``max_seq_length`` tokens (special tokens included):
    under ``"authors"`` any token between ``[CLS]`` and ``[SEP]`` (``[UNK]`` included), under
    ``"skip_special"`` a token that is not special. Texts are tokenised in one batched call."""
    check_token_rules(token_rules)
    if max_seq_length is None:
        max_seq_length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
    content_length = max(1, max_seq_length - tokenizer.num_special_tokens_to_add(pair=False))
    special = set(tokenizer.all_special_ids)

    def has_target(texts: list[str]) -> list[bool]:
        if not texts:
            return []
        encoded = tokenizer(
            texts, add_special_tokens=False, truncation=True, max_length=content_length, verbose=False
        )["input_ids"]
        if token_rules == "authors":
            return [len(ids) > 0 for ids in encoded]
        return [any(token not in special for token in ids) for ids in encoded]

    return has_target


def _check_max_chars(max_chars: int | None) -> None:
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1
    ):
        raise ValueError(f"max_chars must be a positive int or None, got {max_chars!r}")


def _clean_columns(
    dataset: Dataset, columns: list[str], max_chars: int | None
) -> tuple[dict[str, list[str]], DroppedRows]:
    """The cleaned texts of the rows whose every column survives :func:`clean_text`, and the drops."""
    dropped = DroppedRows()
    kept: dict[str, list[str]] = {column: [] for column in columns}
    values = zip(*(dataset[column] for column in columns), strict=True)
    for row, row_values in enumerate(values):
        cleaned = [
            clean_text(value, row, column, max_chars)
            for column, value in zip(columns, row_values, strict=True)
        ]
        reason = next((reason for _, reason in cleaned if reason is not None), None)
        if reason is not None:
            dropped.reasons[reason] += 1
            continue
        for column, (text, _) in zip(columns, cleaned, strict=True):
            kept[column].append(text)
    return kept, dropped


def _with_columns(dataset: Dataset, texts: dict[str, list[str]]) -> Dataset:
    """``dataset`` reduced to ``texts``' columns, holding those texts (the original when unchanged)."""
    selected = dataset.select_columns(list(texts))
    if len(selected) == len(next(iter(texts.values()))) and all(selected[c] == v for c, v in texts.items()):
        return selected
    return Dataset.from_dict(texts, features=Features({column: Value("string") for column in texts}))


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
_ONLY_SPECIAL_TOKEN_TEXT = re.compile(rf"(?:\s|{_SPECIAL_TOKEN_PATTERN.pattern})*")
_ASCII_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # the invisible ASCII characters
_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json"}


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
    # Control and format characters are never printable: most texts need no search.
    invisible = _ASCII_INVISIBLE if value.isascii() else invisible_characters()
    if not value.isprintable() and invisible.search(value):
        # Deleted, as BERT's own text cleaning does; tokenizers without that cleaning get the same text.
        value = invisible.sub("", value)
    if not value.strip():
        return None, "empty or whitespace-only"
    if _ONLY_SPECIAL_TOKEN_TEXT.fullmatch(value):
        return None, "only special-token text"
    if max_chars is not None and len(value) > max_chars:
        # Tokenising a 100k-character line costs time and memory for tokens that truncation drops.
        value = value[:max_chars]
    return value, None


def clean_text_stream(
    dataset: IterableDataset,
    column: str = "text",
    max_chars: int | None = 20_000,
    tokenizer: PreTrainedTokenizerBase | None = None,
    token_rules: str = "authors",
    max_seq_length: int | None = None,
) -> tuple[IterableDataset, DroppedRows]:
    """Lazily cleans and filters a streamed text column (see :func:`clean_text`); with a ``tokenizer``, rows
    with nothing to reconstruct under ``token_rules`` are dropped too (as in :func:`prepare_text_dataset`).

    Rows are dropped as the stream is read, so the returned :class:`DroppedRows` fills up during
    training (read it after ``trainer.train()``); each new drop reason is logged once with its row.
    A value that is neither text nor ``None`` raises a ``TypeError`` naming the row.
    """
    if not isinstance(dataset, IterableDataset):
        raise TypeError(f"dataset must be a datasets.IterableDataset, got {type(dataset).__name__}")
    _check_max_chars(max_chars)
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
    if tokenizer is not None:
        has_target = reconstruction_check(tokenizer, token_rules, max_seq_length)

        def reconstructable(texts: list[str]) -> list[bool]:
            keep = has_target(texts)
            dropped_here = keep.count(False)
            if dropped_here and not dropped.reasons[NOTHING_TO_RECONSTRUCT]:
                logger.warning(
                    "Dropping a row of the text corpus: %s, %r (further such rows are counted)",
                    NOTHING_TO_RECONSTRUCT,
                    texts[keep.index(False)][:80],
                )
            if dropped_here:
                dropped.reasons[NOTHING_TO_RECONSTRUCT] += dropped_here
            return keep

        cleaned = cleaned.filter(reconstructable, input_columns=[column], batched=True, batch_size=256)
    return cleaned, dropped


def load_text_corpus(
    data_files: str | os.PathLike | list[str | os.PathLike],
    column: str = "text",
    max_chars: int | None = 20_000,
    tokenizer: PreTrainedTokenizerBase | None = None,
    token_rules: str = "authors",
    max_seq_length: int | None = None,
) -> tuple[IterableDataset, DroppedRows]:
    """Streams a local corpus (``.txt``: one passage per line; ``.jsonl``: one object per line) without
    loading it into memory, cleaned lazily by :func:`clean_text_stream` (with a ``tokenizer``, rows with
    nothing to reconstruct under ``token_rules`` are dropped and counted as well).

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
    return clean_text_stream(dataset, column, max_chars, tokenizer, token_rules, max_seq_length)
