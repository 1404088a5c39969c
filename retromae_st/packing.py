"""Passage packing: consecutive lines of a document joined into blocks of about ``max_seq_length`` tokens."""

from __future__ import annotations

import gc
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import NamedTuple

import numpy as np
from datasets import Dataset, Features, IterableDataset, Value
from tokenizers import Encoding, Tokenizer, models
from transformers import PreTrainedTokenizerBase

from retromae_st._unicode import unsafe_word_edges
from retromae_st.data import DroppedRows, _check_max_chars, clean_text

logger = logging.getLogger(__name__)

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
        checked_blocks: Blocks tokenised again to check their length: all of them when
            ``check_every_block`` says why, else those holding pieces of a cut line or words with unusual
            edge characters, plus a sample of the others (see :func:`pack_corpus`).
        check_every_block: Why every block is tokenised again (a part of the tokenizer that is not known
            to tokenise a text as its space-separated words one by one), or ``None``.
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
    checked_blocks: int = 0
    check_every_block: str | None = None
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
        self.retokenised_differently = self.words_cut = self.checked_blocks = 0
        self.dropped = DroppedRows()
        self.cpu_seconds = 0.0

    def __str__(self) -> str:
        text = (
            f"{self.lines} lines of {self.documents} documents -> {self.blocks} blocks of <= "
            f"{self.max_seq_length} tokens ({self.tokens} text tokens, fill rate {self.fill_rate:.1%}; "
            f"{self.long_lines} lines longer than a block continued over blocks); {self.dropped}; "
            f"{self.cpu_seconds:.1f} CPU s; {self.checked_blocks} blocks tokenised again to check them"
        )
        if self.check_every_block is not None:
            text += f" (every block: {self.check_every_block})"
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


#: Tokenizer parts under which a text of words separated by single spaces tokenises as its words one by
#: one (each with its space, for byte-level BPE without a prefix space): the normalisers map characters
#: one at a time (NFC/NFKC never compose a character with a space), the pre-tokenizers split at every
#: space, and the models tokenise each pre-tokenized word on its own. Word edges where a normaliser could
#: still reach the space (``unsafe_word_edges``) are excluded line by line.
_CHARACTER_NORMALIZERS = frozenset(
    {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"}
)
_SPACE_SPLITTING_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
_WORD_MODELS = frozenset({"WordPiece", "BPE", "Unigram", "WordLevel"})
_MAX_CACHED_WORDS = 500_000  # about 75 MB of words and counts
_WORDS_PER_ENCODING = 20_000
#: Blocks whose length is the sum of their words' are tokenised again as a check: the first ones, then one
#: in this many (a check that fails makes every later block checked).
_CHECK_ONE_IN = 64
#: The pieces BertPreTokenizer splits ASCII text into: each punctuation character, and the runs between.
_BERT_ASCII_PIECES = re.compile(r"[!-/:-@\[-`{-~]|[^ !-/:-@\[-`{-~]+")


def _parts(config: dict | None, key: str) -> list[dict]:
    if config is None:
        return []
    return (
        [part for inner in config[key] for part in _parts(inner, key)]
        if config["type"] == "Sequence"
        else [config]
    )


def _config_of_parts(backend: Tokenizer) -> dict:
    """What ``tokenizer.json`` says of the tokenizer's parts, without its vocabulary (cheaper to read)."""
    state = {
        name: json.loads(part.__getstate__()) if part is not None else None
        for name, part in (("normalizer", backend.normalizer), ("pre_tokenizer", backend.pre_tokenizer))
    }
    state["model"] = {
        "type": type(backend.model).__name__,
        "dropout": getattr(backend.model, "dropout", None),
    }
    state["added_tokens"] = [
        {"content": token.content, "rstrip": token.rstrip}
        for token in backend.get_added_tokens_decoder().values()
    ]
    return state


def _why_not_tokenised_word_by_word(config: dict) -> str | None:
    """``None`` when each part of the tokenizer (``_config_of_parts``) is one of those above; else which
    part is not."""
    for part in _parts(config.get("normalizer"), "normalizers"):
        if part["type"] not in _CHARACTER_NORMALIZERS:
            return f"its normalizer {part['type']} is not known to keep words apart"
    pre_tokenizers = _parts(config.get("pre_tokenizer"), "pretokenizers")
    if not pre_tokenizers:
        return "it has no pre-tokenizer"
    alone = len(pre_tokenizers) == 1
    for part in pre_tokenizers:
        kind = part["type"]
        if kind in _SPACE_SPLITTING_PRE_TOKENIZERS or (
            alone
            and (
                (kind == "Metaspace" and part.get("split", True))
                or (kind == "ByteLevel" and part.get("use_regex", True))
            )
        ):
            continue
        return f"its pre-tokenizer {kind} is not known to split at every space"
    model = config["model"]
    if model["type"] not in _WORD_MODELS or model.get("dropout"):
        return f"its model {model['type']} is not known to tokenise words one by one"
    for token in config.get("added_tokens", []):
        if token.get("rstrip") or any(char.isspace() for char in token["content"]):
            return f"its added token {token['content']!r} can take in a space"
    return None


class _AddedTokenText:
    """Finds the text of a tokenizer's added tokens (``[UNK]``, ``<mask>``) in a line, ignoring case (a
    normalised added token matches after lowercasing). The tokenizer splits them off before anything else,
    so a word holding one does not tokenise as it does after a space (Metaspace gives the space a ``▁`` of
    its own): such lines are tokenised whole."""

    def __init__(self, contents: list[str]) -> None:
        contents = sorted((content for content in contents if content), key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, contents)), re.IGNORECASE) if contents else None
        # A line without any of their first characters holds none of them: a quick test first.
        firsts = {case(content[0]) for content in contents for case in (str.lower, str.upper)}
        self.first_characters = re.compile("|".join(map(re.escape, sorted(firsts))))

    def found_in(self, text: str) -> bool:
        if self.pattern is None or self.first_characters.search(text) is None:
            return False
        return self.pattern.search(text) is not None


class _Tokenization:
    """The model's fast tokenizer, detached from its padding/truncation settings, how it treats spaces, and
    the token counts of the words it has seen (for a tokenizer that tokenises word by word)."""

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
        config = _config_of_parts(self.backend)
        self.check_every_block = _why_not_tokenised_word_by_word(config)
        self.added_token_text = _AddedTokenText(
            [token["content"] for token in config.get("added_tokens", [])]
        )
        self.word_counts: dict[str, int] = {}
        self.bert_pieces = (
            _BertAsciiPieces.of(config, self.backend, self.leading_space_matters)
            if self.check_every_block is None
            else None
        )
        self.proven_blocks_seen = 0

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

    def count_units(self, units: list[_Unit]) -> tuple[list[int], list[bool]]:
        """Each unit's tokens, and whether that is the sum of its words' tokens (then so is the length of
        a block of such units joined by spaces). Units of a tokenizer outside the known parts, with
        unusual word edges, with an added token's text or without a space before them are tokenised
        whole (not proven)."""
        if self.check_every_block is not None:
            return self.count([self.unit_string(unit) for unit in units]), [False] * len(units)
        bert = self.bert_pieces
        pieces = bert.counts.__getitem__ if bert is not None else None
        get = self.word_counts.__getitem__
        lengths, proven = [0] * len(units), [True] * len(units)
        uncached: list[tuple[int, list[str], int]] = []  # (unit, its uncached words, its other tokens)
        for i, unit in enumerate(units):
            text = unit.text
            ascii_text = text.isascii()
            if (
                not unit.space_before  # a stretch cut from a line without a space: tokenised as it is
                or self.added_token_text.found_in(text)
                or (not ascii_text and unsafe_word_edges().search(text))  # no ASCII one is
            ):
                proven[i] = False
                continue
            if bert is not None and ascii_text:
                lengths[i] = sum(map(pieces, bert.pieces_of(text)))
                continue
            words = text.split(" ")
            tokens = 0
            if bert is not None:  # its ASCII words as one ASCII text (spaces split words for BERT)
                tokens = sum(map(pieces, bert.pieces_of(" ".join([w for w in words if w.isascii()]))))
                words = [word for word in words if not word.isascii()]
            try:
                lengths[i] = tokens + sum(map(get, words))
            except KeyError:
                uncached.append((i, words, tokens))
        if uncached:
            self.cache([words for _, words, _ in uncached])
            for i, words, tokens in uncached:
                lengths[i] = tokens + sum(map(get, words))
        unproven = [i for i, is_proven in enumerate(proven) if not is_proven]
        counts = self.count([self.unit_string(units[i]) for i in unproven])
        for i, length in zip(unproven, counts, strict=True):
            lengths[i] = length
        return lengths, proven

    def cache(self, words_of_units: list[list[str]]) -> None:
        """Counts the words not counted yet (emptying the cache first when it is full)."""
        if len(self.word_counts) > _MAX_CACHED_WORDS:
            self.word_counts.clear()
        unique = dict.fromkeys(chain.from_iterable(words_of_units))
        missing = [word for word in unique if word not in self.word_counts]
        for start in range(0, len(missing), _WORDS_PER_ENCODING):
            part = missing[start : start + _WORDS_PER_ENCODING]
            self.word_counts.update(zip(part, self.count_words(part), strict=True))

    def count_words(self, words: list[str]) -> list[int]:
        """The words' token counts, from one encoding of them joined by spaces: a token belongs to the
        word its offsets start in (or to the space before it)."""
        prefix = " " if self.leading_space_matters else ""
        offsets = self.encode(prefix + " ".join(words)).offsets
        starts = np.fromiter((start for start, _ in offsets), dtype=np.int64, count=len(offsets))
        ends = np.cumsum([len(word) + 1 for word in words]) - (0 if prefix else 1)
        return np.bincount(np.searchsorted(ends, starts, side="right"), minlength=len(words)).tolist()


class _BertAsciiPieces:
    """Token counts of ASCII text for a tokenizer that pre-tokenizes as BERT does (at spaces, and around
    every punctuation character) after normalisers that change ASCII only by lowercasing it: the text is
    lowercased if they lowercase, split as ``BertPreTokenizer`` splits it, and each distinct piece is
    tokenised once by the tokenizer's own model (about 3x cheaper than encoding the words)."""

    def __init__(self, model: models.Model, lowercase: bool, wordpiece: bool) -> None:
        self.lowercase = lowercase
        self.counts = _PieceCounts(model, wordpiece)

    @classmethod
    def of(cls, config: dict, backend: Tokenizer, leading_space_matters: bool) -> _BertAsciiPieces | None:
        """For a tokenizer already known to tokenise word by word (so its normalisers are among
        ``_CHARACTER_NORMALIZERS``): the pieces when it pre-tokenizes with ``BertPreTokenizer``, else ``None``."""
        normalizers = _parts(config.get("normalizer"), "normalizers")
        pre_tokenizers = _parts(config.get("pre_tokenizer"), "pretokenizers")
        if leading_space_matters or [part["type"] for part in pre_tokenizers] != ["BertPreTokenizer"]:
            return None
        lowercase = any(
            part["type"] == "Lowercase" or (part["type"] == "BertNormalizer" and part.get("lowercase", True))
            for part in normalizers
        )
        return cls(backend.model, lowercase, config["model"]["type"] == "WordPiece")

    def pieces_of(self, text: str) -> list[str]:
        return _BERT_ASCII_PIECES.findall(text.lower() if self.lowercase else text)


class _PieceCounts(dict):
    """Pieces' token counts, each piece tokenised by the model the first time it is looked up. WordPiece
    takes a piece that is in its vocabulary whole (the longest match first is the whole piece): one
    token, without tokenising it."""

    def __init__(self, model: models.Model, wordpiece: bool = False) -> None:
        super().__init__()
        self.model = model
        self.wordpiece = wordpiece

    def __missing__(self, piece: str) -> int:
        if len(self) > _MAX_CACHED_WORDS:
            self.clear()
        if self.wordpiece and self.model.token_to_id(piece) is not None:
            count = 1
        else:
            count = len(self.model.tokenize(piece))
        self[piece] = count
        return count


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


def _at_space(string: str, position: int) -> bool:
    """Whether a cut of ``string`` at ``position`` falls between two words (a token's offsets may or may
    not take in the space before it)."""
    return position in (0, len(string)) or string[position].isspace() or string[position - 1].isspace()


def _piece(unit: _Unit, string: str, begin: int, end: int) -> _Unit:
    """The stretch ``string[begin:end]`` of ``unit`` (tokenised as ``string``) as a unit of its own."""
    piece = string[begin:end]
    space_before = unit.space_before if begin == 0 else (piece[:1].isspace() or string[begin - 1].isspace())
    return _Unit(piece.strip(), space_before, unit.starts_line and begin == 0)


class _Block(NamedTuple):
    units: list[_Unit]
    length: int  # the units' tokens, counted one by one
    proven: bool  # the block's text tokenises to ``length`` tokens, by the units' words (not checked)


class _Packer:
    """Packs the units of one document after another into blocks (lists of units), greedily."""

    def __init__(self, tokenization: _Tokenization, stats: PackingStats) -> None:
        self.tokenization = tokenization
        self.capacity = tokenization.capacity
        self.stats = stats
        self.block: list[_Unit] = []
        self.used = 0
        self.proven = True  # the block's length is the sum of its words' (see _Tokenization.count_units)
        self.done: list[_Block] = []
        self.line_tokens = 0

    def close_block(self) -> None:
        if self.block:
            self.done.append(_Block(self.block, self.used, self.proven))
        self.block, self.used, self.proven = [], 0, True

    def add(self, unit: _Unit, length: int, proven: bool) -> None:
        """Adds a unit of ``length`` tokens; ``proven``: that length is the sum of its words'."""
        self.count_long_line(unit, length)
        if self.used + length <= self.capacity:
            self.proven &= proven and (unit.space_before or not self.block)
            self.block.append(unit)
            self.used += length
        elif length <= self.capacity and unit.starts_line:
            self.close_block()
            self.block, self.used, self.proven = [unit], length, proven
        else:
            self.add_long(unit, self.tokenization.unit_string(unit), proven)

    def add_piece(self, piece: _Unit, length: int, proven: bool) -> None:
        """Adds a piece cut from a unit by its tokens' offsets; ``proven``: it starts and ends at a space
        and its unit's length was proven."""
        self.proven &= proven and (piece.space_before or not self.block)
        self.block.append(piece)
        self.used += length

    def count_long_line(self, unit: _Unit, length: int) -> None:
        previous = 0 if unit.starts_line else self.line_tokens
        self.line_tokens = previous + length
        if previous <= self.capacity < self.line_tokens:
            self.stats.long_lines += 1

    def add_long(self, unit: _Unit, string: str, proven: bool = False) -> None:
        """A unit longer than a block (or the next stretch of a line longer than ``max_chars``): the rest
        of the current block, then as many blocks as it needs, cut at word starts where the block allows
        (inside a word only for a word longer than a block). ``proven``: the unit's length is the sum of
        its words' (then so is that of each piece that starts and ends at a space, the rest after a cut
        inside a word being a text of its own)."""
        word_ids, offsets = self.tokenize(string)
        start = 0  # the first token (and offsets[start]: character) not packed yet
        while True:
            room = self.capacity - self.used
            begin = offsets[start][0] if start else 0
            if len(word_ids) - start <= room:
                piece = _piece(unit, string, begin, len(string))
                self.add_piece(piece, len(word_ids) - start, proven and _at_space(string, begin))
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
            piece_proven = proven and at_word and _at_space(string, begin) and _at_space(string, end)
            self.add_piece(_piece(unit, string, begin, end), index - start, piece_proven)
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

    def take(self) -> list[_Block]:
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
    stats = PackingStats(
        max_seq_length=max_seq_length,
        special_tokens_per_block=tokenization.special_tokens,
        check_every_block=tokenization.check_every_block,
    )
    if tokenization.check_every_block is not None:
        logger.info(
            "pack_corpus: every block is tokenised again to check its length: %s", stats.check_every_block
        )
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
        rows = _stream_rows(corpus, column, document_column, batch_size)
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


def _stream_rows(
    dataset: IterableDataset, column: str, document_column: str | None, batch_size: int
) -> Iterator[_Row]:
    """The stream's rows, read in batches (``IterableDataset.iter``). That costs a tenth of reading them
    one by one. It also reads the whole stream inside a dataloader worker: iterating would give that
    worker only its share of the stream's shards, and the packed stream, made by one generator, is a single
    shard that one worker packs. A row missing the column within a batch is ``None``, dropped and counted."""
    index = 0
    for batch in dataset.iter(batch_size=batch_size):
        if column not in batch:
            raise ValueError(f"corpus has no column {column!r}; row {index} has the columns {list(batch)}")
        texts = batch[column]
        documents = batch.get(document_column) if document_column else None
        for offset, text in enumerate(texts):
            yield _Row(index + offset, text, documents[offset] if documents is not None else None)
        index += len(texts)


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
        if text.isprintable() and "  " not in text and text[0] != " " and text[-1] != " ":
            line = text  # no whitespace but single spaces between words already
        else:
            line = " ".join(text.split())  # each run of whitespace one space
        if max_chars is None or len(line) <= max_chars:
            yield _Unit(line, True)
        else:
            yield from _stretches(line, max_chars)
    if in_document:
        yield None


def _stretches(line: str, max_chars: int) -> Iterator[_Unit]:
    """A line longer than ``max_chars`` characters in stretches of at most that, cut at spaces where it can."""
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
    batches = _batches(_document_units(rows, stats, column, max_chars), batch_size)
    while True:
        clock = time.process_time()
        with _collector_paused():
            batch = next(batches, None)
            if batch is not None:
                _pack_batch(batch, packer, tokenization)
            else:
                packer.close_block()
            texts = _checked_texts(packer.take(), tokenization, stats)
        stats.cpu_seconds += time.process_time() - clock
        yield from texts
        if batch is None:
            return


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector while a batch is packed (packing makes no reference
    cycles): the many short-lived tuples and lists of a batch otherwise trigger collections that scan
    every object of the process, about 15% of packing's time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _pack_batch(batch: list[_Unit | None], packer: _Packer, tokenization: _Tokenization) -> None:
    lengths, proven = tokenization.count_units([unit for unit in batch if unit is not None])
    counted = iter(zip(lengths, proven, strict=True))
    for unit in batch:
        if unit is None:
            packer.close_block()
        else:
            packer.add(unit, *next(counted))


def _checked_texts(blocks: list[_Block], tokenization: _Tokenization, stats: PackingStats) -> list[str]:
    """The blocks' texts; those to check are tokenised again, and one longer than a block is cut again
    until it fits."""
    if not blocks:
        return []
    texts = [tokenization.block_text(block.units) for block in blocks]
    lengths = [block.length for block in blocks]
    to_check = [i for i, block in enumerate(blocks) if _needs_check(block, tokenization)]
    _tokenise_again(to_check, texts, lengths, blocks, tokenization, stats)
    if tokenization.check_every_block is None and any(
        blocks[i].proven and lengths[i] != blocks[i].length for i in to_check
    ):
        reason = "a block tokenised to another number of tokens than its words one by one"
        logger.warning("pack_corpus: %s; every block from here on is tokenised again to check it", reason)
        tokenization.check_every_block = stats.check_every_block = reason
        checked = set(to_check)
        rest = [i for i in range(len(blocks)) if i not in checked]
        _tokenise_again(rest, texts, lengths, blocks, tokenization, stats)
    fitting = []
    for text, length in zip(texts, lengths, strict=True):
        if length <= tokenization.capacity:
            fitting.append((text, length))
            continue
        stats.resplit_blocks += 1
        fitting += _split_to_fit(text, tokenization)
    stats.blocks += len(fitting)
    stats.tokens += sum(length for _, length in fitting)
    return [text for text, _ in fitting]


def _needs_check(block: _Block, tokenization: _Tokenization) -> bool:
    """Every block whose length is not proven, and a sample of the others: the first ones, then one in
    ``_CHECK_ONE_IN``."""
    if not block.proven or tokenization.check_every_block is not None:
        return True
    seen = tokenization.proven_blocks_seen
    tokenization.proven_blocks_seen += 1
    return seen < _CHECK_ONE_IN or seen % _CHECK_ONE_IN == 0


def _tokenise_again(
    indices: list[int],
    texts: list[str],
    lengths: list[int],
    blocks: list[_Block],
    tokenization: _Tokenization,
    stats: PackingStats,
) -> None:
    """Sets ``lengths[i]`` to the tokens of ``texts[i]`` for each of ``indices``."""
    for i, length in zip(indices, tokenization.count([texts[i] for i in indices]), strict=True):
        if length != blocks[i].length:
            stats.retokenised_differently += 1
        lengths[i] = length
    stats.checked_blocks += len(indices)


def _split_to_fit(text: str, tokenization: _Tokenization, depth: int = 0) -> list[tuple[str, int]]:
    """A block ``text`` that tokenised to more than a block, cut again (as a line longer than a block is)
    into pieces that each fit, with their lengths."""
    if depth > 3:
        raise ValueError(f"cannot cut a text into pieces of {tokenization.capacity} tokens: {text!r:.80}")
    packer = _Packer(tokenization, PackingStats(max_seq_length=0))
    unit = _Unit(text.strip(), text[:1].isspace())
    packer.add_long(unit, tokenization.unit_string(unit))
    packer.close_block()
    texts = [tokenization.block_text(block.units) for block in packer.take()]
    pieces = []
    for piece, length in zip(texts, tokenization.count(texts), strict=True):
        pieces += (
            [(piece, length)]
            if length <= tokenization.capacity
            else _split_to_fit(piece, tokenization, depth + 1)
        )
    return pieces
