"""prepare_text_dataset / prepare_contrastive_dataset: column and type checks, cleaning, dropped-row report."""

from __future__ import annotations

import pytest
from datasets import Dataset

from retromae_st.data import NOTHING_TO_RECONSTRUCT, prepare_text_dataset


def test_drops_empty_rows_and_reports_why():
    dataset = Dataset.from_dict({"text": ["a passage", "", "   ", None, "another"], "id": [1, 2, 3, 4, 5]})
    cleaned, dropped = prepare_text_dataset(dataset)
    assert cleaned.column_names == ["text"]
    assert cleaned["text"] == ["a passage", "another"]
    assert dropped.reasons == {"empty or whitespace-only": 2, "missing (None)": 1}
    assert dropped.total == 3


def test_missing_column_names_the_available_ones():
    with pytest.raises(ValueError, match=r"no column 'text'.*\['body'\]"):
        prepare_text_dataset(Dataset.from_dict({"body": ["x"]}))


def _mixed_dataset():
    # Arrow columns are typed: build a column of Python objects through a list-of-dicts with a list value.
    return Dataset.from_dict({"text": [["not", "text"], ["also", "not"]]})


def test_list_values_are_rejected():
    with pytest.raises(TypeError, match=r"column 'text'.*row 0 is list"):
        prepare_text_dataset(_mixed_dataset())


def test_all_empty_is_an_error():
    with pytest.raises(ValueError, match="no non-empty text"):
        prepare_text_dataset(Dataset.from_dict({"text": ["", " "]}))


def test_integer_column_is_rejected():
    with pytest.raises(TypeError, match=r"column 'text'.*row 0 is int"):
        prepare_text_dataset(Dataset.from_dict({"text": [1, 2]}))


def test_cleans_like_the_streamed_corpus():
    """In-memory and streamed corpora share one cleaning rule (clean_text)."""
    dataset = Dataset.from_dict(
        {"text": ["zero\u200bwidth and\x00 nul", "[CLS] [SEP]", "bad \ufffd bytes", "x" * 50, "fine"]}
    )
    cleaned, dropped = prepare_text_dataset(dataset, max_chars=20)
    assert cleaned["text"] == ["zerowidth and nul", "x" * 20, "fine"]
    assert dropped.reasons == {"only special-token text": 1, "undecodable bytes (not UTF-8)": 1}


def test_clean_dataset_is_returned_unchanged():
    dataset = Dataset.from_dict({"text": ["one passage", "another passage"]})
    cleaned, dropped = prepare_text_dataset(dataset)
    assert dropped.total == 0
    assert cleaned._fingerprint == dataset.select_columns(["text"])._fingerprint


EMOJI_ROWS = ["a sentence", "🙂🙂 🎉", "another one", "🙂", "", "[UNK] [UNK]"]


@pytest.mark.parametrize(
    ("token_rules", "kept", "nothing"),
    [
        ("authors", ["a sentence", "🙂🙂 🎉", "another one", "🙂"], 0),  # [UNK] is predicted: kept
        ("skip_special", ["a sentence", "another one"], 2),  # nothing but [UNK]: dropped
    ],
)
def test_rows_with_nothing_to_reconstruct_are_dropped_and_counted(tokenizer, token_rules, kept, nothing):
    dataset = Dataset.from_dict({"text": EMOJI_ROWS})
    cleaned, dropped = prepare_text_dataset(dataset, tokenizer=tokenizer, token_rules=token_rules)
    assert cleaned["text"] == kept
    expected = {"empty or whitespace-only": 1, "only special-token text": 1}
    if nothing:
        expected[NOTHING_TO_RECONSTRUCT] = nothing
    assert dropped.reasons == expected
    # Without a tokenizer only the text is cleaned.
    assert prepare_text_dataset(dataset)[0]["text"] == ["a sentence", "🙂🙂 🎉", "another one", "🙂"]


def test_nothing_to_reconstruct_within_max_seq_length_is_dropped(tokenizer):
    """The loss sees only the first max_seq_length tokens: [CLS] [UNK] [UNK] [SEP] has nothing for the old rule."""
    dataset = Dataset.from_dict({"text": ["🙂 🙂 then words", "words first 🙂"]})
    cleaned, dropped = prepare_text_dataset(
        dataset, tokenizer=tokenizer, token_rules="skip_special", max_seq_length=4
    )
    assert cleaned["text"] == ["words first 🙂"]
    assert dropped.reasons == {NOTHING_TO_RECONSTRUCT: 1}
    with pytest.raises(ValueError, match="token_rules"):
        prepare_text_dataset(dataset, tokenizer=tokenizer, token_rules="unk")


@pytest.mark.parametrize("max_chars", [0, -3, 2.5, True])
def test_bad_max_chars_is_an_error(max_chars):
    with pytest.raises(ValueError, match="max_chars"):
        prepare_text_dataset(Dataset.from_dict({"text": ["x"]}), max_chars=max_chars)


def test_contrastive_rows_are_dropped_when_any_text_is_unusable():
    from retromae_st.data import prepare_contrastive_dataset

    dataset = Dataset.from_dict(
        {
            "anchor": ["a cat", "[SEP]", "a dog", "a bird"],
            "positive": ["a kitten", "x", "", "a\u200e sparrow"],
        }
    )
    cleaned, dropped = prepare_contrastive_dataset(dataset)
    assert cleaned["anchor"] == ["a cat", "a bird"]
    assert cleaned["positive"] == ["a kitten", "a sparrow"]
    assert dropped.reasons == {"only special-token text": 1, "empty or whitespace-only": 1}
