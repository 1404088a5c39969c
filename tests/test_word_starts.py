"""Whole-word boundaries per tokenizer family (property-based): WordPiece ``##`` continuations, byte-level BPE
``Ġ`` starts, SentencePiece/Metaspace ``▁`` starts, CJK characters as words, byte pieces, unmarked first pieces."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retromae_st.masking import is_cjk, special_token_table, word_index, word_start_table
from tests.families_helpers import byte_fallback_bpe, family_tokenizer, metaspace_without_prefix

TOKENIZERS = {
    "wordpiece": lambda: family_tokenizer("bert"),
    "byte_level_bpe": lambda: family_tokenizer("roberta"),
    "unigram_metaspace": lambda: family_tokenizer("xlm-roberta"),
    "metaspace_no_prefix": metaspace_without_prefix,
    "byte_fallback_bpe": byte_fallback_bpe,
}
#: Tokenizers that map every character to pieces (no unknown token), so rare characters can be drawn.
BYTE_COMPLETE = {"byte_level_bpe", "byte_fallback_bpe"}

LATIN = "abcdefghijklmnopqrstuvwxyzéïàü"
CJK_IN_CORPUS = "中文北京我们东京日本語"


@functools.cache
def tokenizer_and_tables(name: str):
    tokenizer = TOKENIZERS[name]()
    return tokenizer, word_start_table(tokenizer), special_token_table(tokenizer)


def words(rare: bool):
    latin = st.text(alphabet=LATIN + ("Ωŵ" if rare else ""), min_size=1, max_size=8)
    cjk = st.text(alphabet=CJK_IN_CORPUS + ("龍鳳" if rare else ""), min_size=1, max_size=4)
    return st.lists(st.one_of(latin, cjk), min_size=1, max_size=8).map(" ".join)


def reference_boundaries(text: str, offsets: list[tuple[int, int]], compared: list[int]) -> list[bool]:
    """For every compared token after the first: does a new word start there? A word is a run of
    non-space characters, each CJK character a word of its own; a token that starts inside the character
    the previous token ended in (a split multi-byte character) continues it."""
    boundaries = []
    for previous, position in zip(compared, compared[1:], strict=False):
        start, end = offsets[position]
        first = next(i for i in range(start, end) if not text[i].isspace())
        inside_previous = start < offsets[previous][1]
        new_word = first == 0 or text[first - 1].isspace() or is_cjk(ord(text[first]))
        boundaries.append(new_word and not inside_previous)
    return boundaries


def check_word_boundaries(name: str, text: str) -> None:
    tokenizer, starts, special = tokenizer_and_tables(name)
    encoding = tokenizer(text, return_offsets_mapping=True)
    input_ids = torch.tensor([encoding["input_ids"]])
    maskable = ~special[input_ids]
    words_of_tokens = word_index(input_ids, maskable, starts)[0].tolist()
    pieces = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    # A lone marker piece ("▁" before a character the vocabulary only has without it) holds no character.
    compared = [i for i, ok in enumerate(maskable[0].tolist()) if ok and pieces[i] not in ("▁", "Ġ")]
    expected = reference_boundaries(text, encoding["offset_mapping"], compared)
    got = [words_of_tokens[b] != words_of_tokens[a] for a, b in zip(compared, compared[1:], strict=False)]
    assert got == expected, (name, text, pieces)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_words_follow_whitespace_and_cjk_characters(name, data):
    text = data.draw(words(rare=name in BYTE_COMPLETE))
    check_word_boundaries(name, text)


@pytest.mark.parametrize("name", ["byte_level_bpe", "byte_fallback_bpe"])
def test_characters_split_into_byte_pieces_stay_in_one_word(name):
    tokenizer = tokenizer_and_tables(name)[0]
    pieces = tokenizer.tokenize("ab 龍鳳 Ωŵ")
    byte_pieces = (
        [piece for piece in pieces if piece.startswith("<0x")] if name == "byte_fallback_bpe" else pieces
    )
    assert len(byte_pieces) >= 4, pieces  # the rare characters really were split into bytes
    check_word_boundaries(name, "ab 龍鳳 Ωŵ")


def test_first_piece_without_marker_starts_a_word():
    for name in ("byte_level_bpe", "metaspace_no_prefix", "byte_fallback_bpe"):
        tokenizer, starts, special = tokenizer_and_tables(name)
        ids = tokenizer("cat sat")["input_ids"]
        first = ids[1]
        assert not bool(starts[first]), (name, tokenizer.convert_ids_to_tokens(ids))
        words_of_tokens = word_index(torch.tensor([ids]), ~special[torch.tensor([ids])], starts)[0]
        assert words_of_tokens[1] == 0


def test_byte_level_vocabulary_with_hash_pieces_is_not_read_as_wordpiece():
    tokenizer = tokenizer_and_tables("byte_level_bpe")[0]
    tokenizer = type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer, **tokenizer.special_tokens_map)
    tokenizer.add_tokens(["##", "##ing"])  # a RoBERTa-like vocabulary that happens to hold "##" pieces
    table = word_start_table(tokenizer)
    assert bool(table[tokenizer.convert_tokens_to_ids("Ġcat")])
    continuation = next(t for t in tokenizer.tokenize("cats sat") if not t.startswith("Ġ"))
    assert not bool(table[tokenizer.convert_tokens_to_ids(continuation)])
