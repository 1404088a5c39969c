"""How close RetroMAELoss / DupMAELoss come to the authors' own code on the golden fixture.

Prints, per method, the relative difference of every loss term and of the total, of each group's gradient
norm, and the largest per-parameter gradient differences (the same numbers ``tests/test_authors_code.py``
holds to 1e-5; the fixture comes from ``benchmarks/authors_golden.py``). Runs in the project's venv::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/authors_golden_compare.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel

from benchmarks.common import minilm_path
from tests.test_authors_code import (
    FIXTURE,
    LOSSES,
    authors_batch,
    build_loss,
    relative_differences,
    terms_and_gradients,
)


def main() -> None:
    torch.set_num_threads(1)
    golden = json.loads(FIXTURE.with_suffix(".json").read_text(encoding="utf-8"))
    golden["tensors"] = load_file(str(FIXTURE.with_suffix(".safetensors")))
    with tempfile.TemporaryDirectory() as directory:
        BertModel(BertConfig(**golden["config"])).save_pretrained(directory)
        AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(directory)
        for method in LOSSES:
            loss, parameters = build_loss(method, golden, Path(directory))
            features, masks = authors_batch(golden, method)
            terms, gradients = terms_and_gradients(loss, parameters, features, masks)
            differences = relative_differences(method, golden, terms, gradients)
            print(f"## {method}")
            for name, value in differences.items():
                if not name.startswith("gradient"):
                    print(f"  {name:<28} {value:.2e}")
            per_parameter = sorted(
                ((value, name) for name, value in differences.items() if name.startswith("gradient of")),
                reverse=True,
            )
            print(f"  largest of {len(per_parameter)} per-parameter gradient differences:")
            for value, name in per_parameter[:5]:
                print(f"    {value:.2e}  {name.removeprefix('gradient of ')}")


if __name__ == "__main__":
    main()
