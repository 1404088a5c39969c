"""prepare_text_dataset: column and type checks, dropped-row report."""

from __future__ import annotations

import pytest
from datasets import Dataset

from retromae_st.data import prepare_text_dataset


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
