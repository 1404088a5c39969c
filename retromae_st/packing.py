"""Passage packing: consecutive lines of a document joined into blocks of about ``max_seq_length`` tokens."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from datasets import Dataset, Features, IterableDataset, Value
from tokenizers import Encoding, Tokenizer
from transformers import PreTrainedTokenizerBase

from retromae_st.data import DroppedRows, _check_max_chars, clean_text

logger = logging.getLogger(__name__)

_WHITESPACE_TO_NORMALISE = re.compile(r"\s{2,}|[^\S ]")  # runs of whitespace, or one non-space whitespace
_PROBE = "Packing probe, with words: hello world 123."


@dataclass
class PackingStats:
    """What :func:`pack_corpus` did. For a streamed corpus it fills as the stream is consumed, in the
    process that reads it (with dataloader workers, in theirs), and each new pass over the stream starts
    it again from zero.

    Attributes:
        max_seq_length: The block size in tokens, special tokens included.
        lines: Non-empty lines packed.
        documents: Documents with at least one non-empty line.
        blocks: Blocks written.
        tokens: Tokens of the blocks' texts, special tokens excluded (as the tokenizer gives them for the
            block texts).
        special_tokens_per_block: Special tokens the tokenizer adds to every block (2 for BERT).
        long_lines: Lines longer than a block, cut at token boundaries over several blocks.
        resplit_blocks: Blocks whose joined text tokenised to more than ``max_seq_length`` tokens and
            were split again (0 for tokenizers that round-trip exactly, see :func:`pack_corpus`).
        retokenised_differently: Blocks whose joined text tokenised to another number of tokens than
            its lines did one by one (a tokenizer that does not round-trip).
        words_cut: Cuts inside a word longer than a block: the tokens after such a cut are those of the
            rest of the word on its own (e.g. ``ing`` instead of ``##ing``).
        dropped: Rows dropped by :func:`retromae_st.data.clean_text`, by reason.
        cpu_seconds: Process CPU time spent packing (``time.process_time()``, the consumer excluded).
    """

    max_seq_length: int
    lines: int = 0
    documents: int = 0
    blocks: int = 0
    tokens: int = 0
    special_tokens_per_block: int = 0
    long_lines: int = 0
    resplit_blocks: int = 0
    retokenised_differently: int = 0
    words_cut: int = 0
    dropped: DroppedRows = field(default_factory=DroppedRows)
    cpu_seconds: float = 0.0

    @property
    def fill_rate(self) -> float:
        """Real (non-padding) tokens over ``blocks * max_seq_length``; special tokens count as real."""
        if not self.blocks:
            return 0.0
        return (self.tokens + self.blocks * self.special_tokens_per_block) / (
            self.blocks * self.max_seq_length
        )

    def reset(self) -> None:
        for name in ("lines", "documents", "blocks", "tokens", "long_lines", "resplit_blocks"):
            setattr(self, name, 0)
        self.retokenised_differently = self.words_cut = 0
        self.dropped = DroppedRows()
        self.cpu_seconds = 0.0

    def __str__(self) -> str:
        text = (
            f"{self.lines} lines of {self.documents} documents -> {self.blocks} blocks of <= "
            f"{self.max_seq_length} tokens ({self.tokens} text tokens, fill rate {self.fill_rate:.1%}; "
            f"{self.long_lines} lines longer than a block continued over blocks); {self.dropped}; "
            f"{self.cpu_seconds:.1f} CPU s"
        )
        if self.words_cut:
            text += f"; {self.words_cut} cuts inside words longer than a block"
        if self.resplit_blocks or self.retokenised_differently:
            text += (
                f"; {self.retokenised_differently} blocks tokenised differently from their lines, "
                f"{self.resplit_blocks} of them split again to fit"
            )
        return text


class _Unit(NamedTuple):
    """A stretch of one line (the whole line unless it had to be cut): its text, without leading or
    trailing spaces, whether a space separates it from the text before it, and whether it starts a line."""

    text: str
    space_before: bool
    starts_line: bool = True


class _Tokenization:
    """The model's fast tokenizer, detached from its padding/truncation settings, and how it treats spaces."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> None:
        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.special_tokens = len(self.backend.encode("", add_special_tokens=True))
        self.capacity = max_seq_length - self.special_tokens
        # Byte-level BPE without a prefix space (RoBERTa, GPT-2) gives a word another token after a space
        # ("Ġworld") than at the start ("world"): there every unit is tokenised, and written, with its space.
        without = self.backend.encode(_PROBE, add_special_tokens=False).ids
        self.leading_space_matters = (
            self.backend.encode(" " + _PROBE, add_special_tokens=False).ids != without
        )

    def unit_string(self, unit: _Unit) -> str:
        """The string a unit is tokenised as: the text the unit adds to a block that it starts."""
        return " " + unit.text if unit.space_before and self.leading_space_matters else unit.text

    def block_text(self, units: list[_Unit]) -> str:
        parts = [self.unit_string(units[0])]
        parts += [" " + u.text if u.space_before else u.text for u in units[1:]]
        return "".join(parts)

    def count(self, strings: list[str]) -> list[int]:
        return [len(e) for e in self.backend.encode_batch_fast(strings, add_special_tokens=False)]

    def encode(self, string: str) -> Encoding:
        return self.backend.encode(string, add_special_tokens=False)


def _cut(
    word_ids: list[int | None], offsets: list[tuple[int, int]], start: int, limit: int, within_word: bool
) -> tuple[int, bool] | None:
    """The largest token index ``start < i <= limit`` before which the text can be cut, and whether it
    starts a word of the pre-tokenizer (then both halves tokenise as before). Only with ``within_word``,
    where no word starts in that range, any token that starts at a new character. ``None`` when there is
    no such index."""
    limit = min(limit, len(word_ids) - 1)
    for i in range(limit, start, -1):
        if word_ids[i] != word_ids[i - 1] and offsets[i][0] >= offsets[i - 1][1]:
            return i, True
    if within_word:
        for i in range(limit, start, -1):
            if offsets[i][0] >= offsets[i - 1][1] and offsets[i][0] > offsets[start][0]:
                return i, False
    return None


def _piece(unit: _Unit, string: str, begin: int, end: int) -> _Unit:
    """The stretch ``string[begin:end]`` of ``unit`` (tokenised as ``string``) as a unit of its own."""
    piece = string[begin:end]
    space_before = unit.space_before if begin == 0 else (piece[:1].isspace() or string[begin - 1].isspace())
    return _Unit(piece.strip(), space_before, unit.starts_line and begin == 0)


class _Packer:
    """Packs the units of one document after another into blocks (lists of units), greedily."""

    def __init__(self, tokenization: _Tokenization, stats: PackingStats) -> None:
        self.tokenization = tokenization
        self.capacity = tokenization.capacity
        self.stats = stats
        self.block: list[_Unit] = []
        self.used = 0
        self.done: list[tuple[list[_Unit], int]] = []  # (units, their tokens one by one)
        self.line_tokens = 0

    def close_block(self) -> None:
        if self.block:
            self.done.append((self.block, self.used))
        self.block, self.used = [], 0

    def add(self, unit: _Unit, length: int, string: str) -> None:
        self.count_long_line(unit, length)
        if self.used + length <= self.capacity:
            self.block.append(unit)
            self.used += length
        elif length <= self.capacity and unit.starts_line:
            self.close_block()
            self.block, self.used = [unit], length
        else:
            self.add_long(unit, string)

    def count_long_line(self, unit: _Unit, length: int) -> None:
        previous = 0 if unit.starts_line else self.line_tokens
        self.line_tokens = previous + length
        if previous <= self.capacity < self.line_tokens:
            self.stats.long_lines += 1

    def add_long(self, unit: _Unit, string: str) -> None:
        """A unit longer than a block (or the next stretch of a line longer than ``max_chars``): the rest of the current block, then as many blocks as it needs, cut
        at word starts where the block allows (inside a word only for a word longer than a block)."""
        word_ids, offsets = self.tokenize(string)
        start = 0  # the first token (and offsets[start]: character) not packed yet
        while True:
            room = self.capacity - self.used
            begin = offsets[start][0] if start else 0
            if len(word_ids) - start <= room:
                self.block.append(_piece(unit, string, begin, len(string)))
                self.used += len(word_ids) - start
                return
            cut = _cut(word_ids, offsets, start, start + room, within_word=not self.block)
            if cut is None:
                if not self.block:
                    raise ValueError(
                        f"cannot cut a text into pieces of {self.capacity} tokens: {unit.text!r:.80}"
                    )
                self.close_block()
                continue
            index, at_word = cut
            end = offsets[index][0]
            self.block.append(_piece(unit, string, begin, end))
            self.used += index - start
            self.close_block()
            start = index
            if not at_word:
                self.stats.words_cut += 1
                # Cut inside a word: the rest does not tokenise as it did in the word; tokenise it again.
                unit = _piece(unit, string, end, len(string))
                string = self.tokenization.unit_string(unit)
                (word_ids, offsets), start = self.tokenize(string), 0

    def tokenize(self, string: str) -> tuple[list[int | None], list[tuple[int, int]]]:
        encoding = self.tokenization.encode(string)
        return encoding.word_ids, encoding.offsets  # each property access builds a new list

    def take(self) -> list[tuple[list[_Unit], int]]:
        done, self.done = self.done, []
        return done


def pack_corpus(
    corpus: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    column: str = "text",
    document_column: str | None = "document_id",
    batch_size: int = 1000,
    max_chars: int | None = 20_000,
) -> tuple[Dataset | IterableDataset, PackingStats]:
    """Packs consecutive lines of each document into blocks of at most ``max_seq_length`` tokens, as the
    RetroMAE authors prepare their pre-training data (blocks of about 512 tokens of Wikipedia/BookCorpus).

    Rows of ``column`` are lines in order. A document ends at an empty (or whitespace-only) row and, when
    the corpus has a ``document_column``, where its value changes; blocks never cross a document boundary.
    Every other row is cleaned by :func:`retromae_st.data.clean_text` (rows it drops are counted in
    ``PackingStats.dropped``) and its whitespace is normalised (each run becomes one space).

    The lines of a document fill a block in order, joined with one space, without splitting a line that
    fits in a block; a line that does not fit in what is left starts the next block. A line longer than a
    block fills the rest of the current block and continues over the next blocks, cut at word starts of
    the tokenizer's pre-tokenizer (inside a word only where one word is longer than a block). Nothing is
    dropped: the authors instead drop what overflows a block. A line longer than ``max_chars`` characters
    is tokenised in pieces of at most ``max_chars`` characters, cut at spaces (unlike ``clean_text``, which
    cuts such a line short).

    Each block's text, tokenised with special tokens as sentence-transformers' collator does
    (``tokenizer(text, add_special_tokens=True)``), has at most ``max_seq_length`` tokens: every block is
    tokenised again to check it, and one that came out longer is cut again. For WordPiece (BERT), byte-level
    BPE (RoBERTa; each line keeps the leading space it tokenises with) and Unigram/Metaspace (XLM-R) the
    block's tokens are those of its lines, in order, except after a cut inside a word longer than a block
    (``PackingStats.words_cut``); ``PackingStats.retokenised_differently`` counts the blocks of a
    tokenizer that does not round-trip.

    Args:
        corpus: The lines, a ``Dataset`` or a streamed ``IterableDataset`` (packed lazily as it is read).
        tokenizer: The model's fast tokenizer (the offset mappings of a fast tokenizer give the cuts).
        max_seq_length: The block size in tokens, special tokens included.
        column: The text column.
        document_column: A column whose change of value ends a document, used when the corpus has it.
        batch_size: Lines tokenised per batch.
        max_chars: Longest stretch of a line tokenised at once (``None``: whole lines).

    Returns:
        The blocks (same kind as ``corpus``, one ``text`` column) and the :class:`PackingStats`.

    Example:
        ::

            from datasets import Dataset
            from retromae_st import pack_corpus

            lines = Dataset.from_dict({"text": ["First sentence.", "Second one.", "", "Next document."]})
            blocks, stats = pack_corpus(lines, model.tokenizer, max_seq_length=512)
            print(stats)
    """
    _check_arguments(corpus, tokenizer, max_seq_length, batch_size, max_chars)
    tokenization = _Tokenization(tokenizer, max_seq_length)
    if tokenization.capacity < 1:
        raise ValueError(
            f"max_seq_length={max_seq_length} leaves no room for text: the tokenizer adds "
            f"{tokenization.special_tokens} special tokens, so max_seq_length must be at least "
            f"{tokenization.special_tokens + 1}"
        )
    stats = PackingStats(max_seq_length=max_seq_length, special_tokens_per_block=tokenization.special_tokens)
    features = Features({"text": Value("string")})
    if isinstance(corpus, Dataset):
        _check_has_column(corpus.column_names, column)
        documents = document_column if document_column in corpus.column_names else None
        rows = _dataset_rows(corpus, column, documents, batch_size)
        texts = list(_packed_texts(rows, tokenization, stats, column, batch_size, max_chars))
        if not texts:
            raise ValueError(f"column {column!r} has no non-empty text ({stats.dropped})")
        return Dataset.from_dict({"text": texts}, features=features), stats
    if corpus.column_names is not None:
        _check_has_column(corpus.column_names, column)

    def generate() -> Iterator[dict[str, str]]:
        stats.reset()
        rows = _stream_rows(corpus, column, document_column)
        for text in _packed_texts(rows, tokenization, stats, column, batch_size, max_chars):
            yield {"text": text}

    return IterableDataset.from_generator(generate, features=features), stats


def _check_arguments(corpus, tokenizer, max_seq_length, batch_size, max_chars) -> None:
    if not isinstance(corpus, (Dataset, IterableDataset)):
        raise TypeError(f"corpus must be a datasets.Dataset or IterableDataset, got {type(corpus).__name__}")
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"pack_corpus needs a fast tokenizer, got the slow {type(tokenizer).__name__}: lines longer than a "
            "block are cut at token boundaries found with the offset mappings that only fast tokenizers give "
            "(load it with AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    for name, value in (("max_seq_length", max_seq_length), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    _check_max_chars(max_chars)


def _check_has_column(column_names: list[str], column: str) -> None:
    if column not in column_names:
        raise ValueError(f"corpus has no column {column!r}; its columns are {column_names}")


class _Row(NamedTuple):
    index: int
    text: object
    document: object


def _dataset_rows(
    dataset: Dataset, column: str, document_column: str | None, batch_size: int
) -> Iterator[_Row]:
    columns = [column] + ([document_column] if document_column else [])
    index = 0
    for batch in dataset.select_columns(columns).iter(batch_size=batch_size):
        documents = batch[document_column] if document_column else [None] * len(batch[column])
        for text, document in zip(batch[column], documents, strict=True):
            yield _Row(index, text, document)
            index += 1


def _stream_rows(dataset: IterableDataset, column: str, document_column: str | None) -> Iterator[_Row]:
    for index, example in enumerate(dataset):
        if column not in example:
            raise ValueError(f"corpus has no column {column!r}; row {index} has the columns {list(example)}")
        yield _Row(index, example[column], example.get(document_column) if document_column else None)


def _document_units(
    rows: Iterable[_Row], stats: PackingStats, column: str, max_chars: int | None
) -> Iterator[_Unit | None]:
    """The units of the cleaned lines, with ``None`` at every document boundary."""
    document: object = None
    in_document = False
    for row in rows:
        if in_document and row.document != document:
            yield None
            in_document = False
        document = row.document
        text, reason = clean_text(row.text, row.index, column, None)
        if reason == "empty or whitespace-only":
            if in_document:
                yield None
            in_document = False
            continue
        if reason is not None:
            if not stats.dropped.reasons[reason]:
                logger.warning(
                    "pack_corpus: dropping row %d: %s (further such rows are counted)", row.index, reason
                )
            stats.dropped.reasons[reason] += 1
            continue
        if not in_document:
            stats.documents += 1
            in_document = True
        stats.lines += 1
        yield from _line_units(_WHITESPACE_TO_NORMALISE.sub(" ", text).strip(), max_chars)
    if in_document:
        yield None


def _line_units(line: str, max_chars: int | None) -> Iterator[_Unit]:
    """A line as one unit, or in stretches of at most ``max_chars`` characters cut at spaces where it can."""
    if max_chars is None or len(line) <= max_chars:
        yield _Unit(line, True)
        return
    start, space_before = 0, True
    while len(line) - start > max_chars:
        end = line.rfind(" ", start + 1, start + max_chars + 1)
        at_space = end > start
        end = end if at_space else start + max_chars
        yield _Unit(line[start:end], space_before, starts_line=start == 0)
        start, space_before = end + at_space, at_space
    yield _Unit(line[start:], space_before, starts_line=False)


def _batches(units: Iterator[_Unit | None], batch_size: int) -> Iterator[list[_Unit | None]]:
    batch: list[_Unit | None] = []
    for unit in units:
        batch.append(unit)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _packed_texts(
    rows: Iterable[_Row],
    tokenization: _Tokenization,
    stats: PackingStats,
    column: str,
    batch_size: int,
    max_chars: int | None,
) -> Iterator[str]:
    packer = _Packer(tokenization, stats)
    clock = time.process_time()
    for batch in _batches(_document_units(rows, stats, column, max_chars), batch_size):
        units = [unit for unit in batch if unit is not None]
        strings = [tokenization.unit_string(unit) for unit in units]
        lengths = iter(tokenization.count(strings))
        strings_iter = iter(strings)
        for unit in batch:
            if unit is None:
                packer.close_block()
            else:
                packer.add(unit, next(lengths), next(strings_iter))
        texts = _checked_texts(packer.take(), tokenization, stats)
        stats.cpu_seconds += time.process_time() - clock
        yield from texts
        clock = time.process_time()
    packer.close_block()
    texts = _checked_texts(packer.take(), tokenization, stats)
    stats.cpu_seconds += time.process_time() - clock
    yield from texts


def _checked_texts(
    blocks: list[tuple[list[_Unit], int]], tokenization: _Tokenization, stats: PackingStats
) -> list[str]:
    """The blocks' texts, each tokenised again: one longer than a block is cut again until it fits."""
    if not blocks:
        return []
    texts = [tokenization.block_text(units) for units, _ in blocks]
    expected = [length for _, length in blocks]
    checked = []
    for text, length, want in zip(texts, tokenization.count(texts), expected, strict=True):
        if length != want:
            stats.retokenised_differently += 1
        if length <= tokenization.capacity:
            checked.append((text, length))
            continue
        stats.resplit_blocks += 1
        checked += _split_to_fit(text, tokenization)
    stats.blocks += len(checked)
    stats.tokens += sum(length for _, length in checked)
    return [text for text, _ in checked]


def _split_to_fit(text: str, tokenization: _Tokenization, depth: int = 0) -> list[tuple[str, int]]:
    """A block ``text`` that tokenised to more than a block, cut again (as a line longer than a block is)
    into pieces that each fit, with their lengths."""
    if depth > 3:
        raise ValueError(f"cannot cut a text into pieces of {tokenization.capacity} tokens: {text!r:.80}")
    packer = _Packer(tokenization, PackingStats(max_seq_length=0))
    unit = _Unit(text.strip(), text[:1].isspace())
    packer.add_long(unit, tokenization.unit_string(unit))
    packer.close_block()
    texts = [tokenization.block_text(units) for units, _ in packer.take()]
    pieces = []
    for piece, length in zip(texts, tokenization.count(texts), strict=True):
        pieces += (
            [(piece, length)]
            if length <= tokenization.capacity
            else _split_to_fit(piece, tokenization, depth + 1)
        )
    return pieces
