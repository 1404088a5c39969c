"""pack_corpus's token counts without tokenising every block again: words counted one by one (and cached)
give each line's and each block's exact length for the tokenizers they are proven for; every other case is
tokenised again, and a sampled check that fails makes every later block checked."""

from __future__ import annotations

import functools
import logging
import unicodedata

import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from retromae_st import pack_corpus
from retromae_st import packing as packing_module
from retromae_st._unicode import invisible_characters, unsafe_word_edges
from retromae_st.packing import _Tokenization, _Unit
from tests.families_helpers import byte_fallback_bpe, family_tokenizer, metaspace_without_prefix
from tests.test_packing import _wrap, as_rows, assert_blocks_follow_documents, documents_of

TOKENIZERS = {
    "minilm": None,  # the session's real all-MiniLM-L6-v2 tokenizer
    "wordpiece": lambda: family_tokenizer("bert"),
    "byte_level_bpe": lambda: family_tokenizer("roberta"),
    "unigram_metaspace": lambda: family_tokenizer("xlm-roberta"),
    "modernbert": lambda: family_tokenizer("modernbert"),
    "metaspace_no_prefix": metaspace_without_prefix,
    "byte_fallback_bpe": byte_fallback_bpe,
}
BERT_LIKE = {"minilm", "wordpiece"}  # BertPreTokenizer: ASCII lines are split as it splits them

#: Characters that stress the word-by-word rule: accents precomposed and combining, marks that start a
#: word, compatibility characters that decompose to a space first (U+00B4, U+00A8), a ligature, full-width
#: letters, CJK, an emoji outside the BMP, punctuation, digits and the text of a special token.
ALPHABET = "abcXYZ019éüñ" + "\u0301\u0308" + "\u00b4\u00a8" + "ﬁＡｂ" + "中文" + "🙂" + ".,!?'-()[]" + "$%"
WORDS = st.one_of(
    st.text(alphabet=ALPHABET, min_size=1, max_size=7), st.sampled_from(["[UNK]", "<unk>", "[MASK]"])
)
LINES = st.lists(WORDS, min_size=1, max_size=9).map(" ".join)


@pytest.fixture(scope="module")
def tokenizers(tokenizer):
    return {name: tokenizer if build is None else build() for name, build in TOKENIZERS.items()}


def full_count(tokenizer, string: str) -> int:
    return len(tokenizer(string, add_special_tokens=False)["input_ids"])


def line_unit(line: str) -> _Unit:
    return _Unit(" ".join(line.split()), True)


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_these_tokenizers_are_counted_word_by_word(tokenizers, name):
    tokenization = _Tokenization(tokenizers[name], 128)
    assert tokenization.check_every_block is None
    assert (tokenization.bert_pieces is not None) == (name in BERT_LIKE)


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_word_by_word_counts_are_the_tokenizers_on_real_lines(tokenizers, sample_texts, name):
    tokenizer = tokenizers[name]
    tokenization = _Tokenization(tokenizer, 128)
    units = [line_unit(line) for line in sample_texts[:300]]
    lengths, proven = tokenization.count_units(units)
    assert sum(proven) > 250
    for unit, length in zip(units, lengths, strict=True):
        assert length == full_count(tokenizer, tokenization.unit_string(unit)), unit.text
    # A block of proven lines joined by spaces has the sum of their lengths: what lets it go unchecked.
    block = [(unit, length) for unit, length, ok in zip(units, lengths, proven, strict=True) if ok][:40]
    text = tokenization.block_text([unit for unit, _ in block])
    assert full_count(tokenizer, text) == sum(length for _, length in block)


@pytest.mark.parametrize("name", list(TOKENIZERS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINES, min_size=1, max_size=6))
def test_proven_counts_hold_for_lines_and_their_blocks(tokenizers, name, lines):
    tokenizer = tokenizers[name]
    tokenization = _tokenization(name, tokenizer)
    units = [line_unit(line) for line in lines if line.split()]
    if not units:
        return
    lengths, proven = tokenization.count_units(units)
    for unit, length in zip(units, lengths, strict=True):
        assert length == full_count(tokenizer, tokenization.unit_string(unit)), unit.text
    block = [unit for unit, ok in zip(units, proven, strict=True) if ok]
    if block:
        expected = sum(length for length, ok in zip(lengths, proven, strict=True) if ok)
        assert full_count(tokenizer, tokenization.block_text(block)) == expected, tokenization.block_text(
            block
        )


@functools.cache
def _tokenization(name: str, tokenizer) -> _Tokenization:
    return _Tokenization(tokenizer, 512)  # one per family, so the cache carries over between examples


def test_a_full_word_cache_is_emptied_and_counts_stay_right(tokenizer, sample_texts, monkeypatch):
    monkeypatch.setattr(packing_module, "_MAX_CACHED_WORDS", 50)
    tokenization = _Tokenization(tokenizer, 128)
    units = [line_unit(line) for line in sample_texts[:200]]
    for start in range(0, len(units), 20):
        batch = units[start : start + 20]
        lengths, _ = tokenization.count_units(batch)
        assert lengths == [full_count(tokenizer, unit.text) for unit in batch]
        assert len(tokenization.word_counts) <= 50 + 20 * 60


def test_a_word_with_an_unusual_edge_is_left_to_the_tokenizer(tokenizer):
    tokenization = _Tokenization(tokenizer, 128)
    lines = [
        "plain words here",
        "a \u0301b starts with a mark",
        "ends with a compatibility space x \u00b4y",
        "東京 🙂 ok",
    ]
    lengths, proven = tokenization.count_units([line_unit(line) for line in lines])
    assert proven == [True, False, False, False]
    assert lengths == [full_count(tokenizer, line) for line in lines]


def _tokenizer_with(normalizer=None, pre_tokenizer=None):
    vocab = {
        token: i for i, token in enumerate(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "a", "b", "c"])
    }
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    if normalizer is not None:
        backend.normalizer = normalizer
    if pre_tokenizer is not None:
        backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return _wrap(backend, "[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")


@pytest.mark.parametrize(
    ("normalizer", "pre_tokenizer", "named"),
    [
        (normalizers.Replace("a", "b c"), pre_tokenizers.WhitespaceSplit(), "normalizer Replace"),
        (None, pre_tokenizers.Split(" ", "removed"), "pre-tokenizer Split"),
        (None, None, "no pre-tokenizer"),
    ],
)
def test_other_tokenizers_check_every_block(normalizer, pre_tokenizer, named, caplog):
    tokenizer = _tokenizer_with(normalizer, pre_tokenizer)
    lines = ["a b c", "c b", "a a a b", "", "b c a b c a", "c"]
    with caplog.at_level(logging.INFO, logger="retromae_st.packing"):
        blocks, stats = pack_corpus(Dataset.from_dict({"text": lines}), tokenizer, max_seq_length=6)
    assert stats.check_every_block is not None and named in stats.check_every_block
    assert named in caplog.text
    assert stats.checked_blocks >= stats.blocks
    encoded = tokenizer(list(blocks["text"]))["input_ids"]
    assert max(len(ids) for ids in encoded) <= 6
    assert " ".join(blocks["text"]).split() == " ".join(lines).split()  # nothing lost or reordered


def test_known_tokenizers_check_only_some_blocks(tokenizer, sample_texts):
    rows = [line for line in sample_texts for _ in range(3)][:3000]
    blocks, stats = pack_corpus(Dataset.from_dict({"text": rows}), tokenizer, max_seq_length=64)
    assert stats.check_every_block is None
    assert 64 <= stats.checked_blocks < stats.blocks / 3
    assert stats.retokenised_differently == 0
    encoded = tokenizer(list(blocks["text"]))["input_ids"]
    assert max(len(ids) for ids in encoded) <= 64
    assert "blocks tokenised again to check them" in str(stats)


@pytest.mark.parametrize("family", ["minilm", "byte_level_bpe"])
def test_a_failed_sampled_check_makes_every_later_block_checked(
    tokenizers, sample_texts, family, monkeypatch, caplog
):
    # Counts one token short per line, as if the tokenizer did not tokenise word by word after all.
    tokenizer = tokenizers[family]
    count_units = _Tokenization.count_units

    def undercount(self, units):
        lengths, proven = count_units(self, units)
        return [
            max(length - 1, 1) if ok else length for length, ok in zip(lengths, proven, strict=True)
        ], proven

    monkeypatch.setattr(_Tokenization, "count_units", undercount)
    documents = documents_of(sample_texts) * 3
    with caplog.at_level(logging.WARNING, logger="retromae_st.packing"):
        blocks, stats = pack_corpus(
            Dataset.from_dict({"text": as_rows(documents)}), tokenizer, 48, batch_size=16
        )
    assert "every block from here on is tokenised again" in caplog.text
    assert stats.check_every_block is not None
    assert stats.retokenised_differently > 0
    leading_space = family == "byte_level_bpe"
    assert_blocks_follow_documents(tokenizer, blocks, documents, 48, leading_space)


def test_the_invisible_characters_are_the_control_and_format_characters():
    invisible = invisible_characters()
    for point in range(0x110000):
        char = chr(point)
        category = unicodedata.category(char)
        if category == "Cs":
            continue
        expected = (category == "Cc" and char not in "\t\n\r") or category == "Cf"
        assert bool(invisible.fullmatch(char)) == expected, hex(point)


def test_unusual_word_edges():
    edges = unsafe_word_edges()
    ascii_text = "".join(chr(point) for point in range(0x21, 0x7F))
    assert edges.search(" ".join(ascii_text)) is None
    for point in range(0x10000):
        char = chr(point)
        category = unicodedata.category(char)
        if category == "Cs" or char.isspace():
            continue
        decomposed = unicodedata.normalize("NFKD", char)
        first = category[0] == "M" or category == "Cn" or decomposed[0].isspace()
        last = category == "Cn" or decomposed[-1].isspace()
        assert bool(edges.search(f"x {char}y")) == first, hex(point)
        assert bool(edges.search(f"y{char} x")) == last, hex(point)
    assert edges.search("a 🙂") and edges.search("🙂 a")  # outside the BMP: always such an edge


@pytest.mark.parametrize("family", ["minilm", "byte_level_bpe", "unigram_metaspace"])
def test_stretches_of_a_line_cut_without_a_space_still_fit(tokenizers, family):
    # max_chars=40 cuts the 90-letter word with no space in it: those stretches are tokenised as they are.
    tokenizer = tokenizers[family]
    line = "short words first " + "x" * 90 + " and then more short words to end the line"
    blocks, _ = pack_corpus(Dataset.from_dict({"text": [line]}), tokenizer, 24, max_chars=40)
    assert max(len(ids) for ids in tokenizer(list(blocks["text"]))["input_ids"]) <= 24
    assert "".join(blocks["text"]).replace(" ", "") == line.replace(" ", "")


@pytest.mark.parametrize("name", ["minilm", "wordpiece"])
def test_wordpiece_takes_every_piece_of_its_vocabulary_whole(tokenizers, name):
    # What lets bert_pieces count a piece in the vocabulary as one token without tokenising it.
    tokenization = _Tokenization(tokenizers[name], 128)
    model = tokenization.backend.model
    counts = tokenization.bert_pieces.counts
    assert counts.wordpiece
    vocabulary = tokenization.backend.get_vocab(with_added_tokens=False)
    assert all(counts[piece] == len(model.tokenize(piece)) == 1 for piece in vocabulary)
    for piece in ("unbelievably", "zzzqqq", "tokenisation", "x" * 120):  # out of the vocabulary
        assert counts[piece] == len(model.tokenize(piece))


@pytest.mark.parametrize("family", ["minilm", "byte_level_bpe", "unigram_metaspace"])
def test_pieces_of_long_lines_cut_at_spaces_go_unchecked_and_fit(
    tokenizers, sample_texts, family, monkeypatch
):
    # Every block here holds a piece of one long line; with the sample off, only pieces cut elsewhere
    # than at a space are tokenised again, and every block still fits and keeps the line's tokens.
    tokenizer = tokenizers[family]
    monkeypatch.setattr(packing_module, "_needs_check", lambda block, tokenization: not block.proven)
    documents = [[" ".join(sample_texts[20:26])]]  # the long line of documents_of: no word over a block
    blocks, stats = pack_corpus(Dataset.from_dict({"text": as_rows(documents)}), tokenizer, 24)
    assert (stats.long_lines, stats.words_cut) == (1, 0) and stats.blocks > 5
    assert stats.checked_blocks < stats.blocks / 2
    assert_blocks_follow_documents(tokenizer, blocks, documents, 24, family == "byte_level_bpe")
    # With a word longer than a block, the rest after a cut inside it is a text of its own: its pieces
    # cut at spaces go unchecked too, and still fit.
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 2
    line = " ".join([sample_texts[20], word, sample_texts[21], word, sample_texts[22]])
    blocks, stats = pack_corpus(Dataset.from_dict({"text": [line]}), tokenizer, 24)
    assert stats.words_cut > 0 or family == "minilm"  # WordPiece makes a 90-letter word one [UNK]
    assert stats.checked_blocks < stats.blocks
    assert max(len(ids) for ids in tokenizer(list(blocks["text"]))["input_ids"]) <= 24
