"""How close RetroMAELoss / DupMAELoss come to the authors' own code on the golden fixture.

Prints, per method, the relative difference of every loss term and of the total, of each group's gradient
norm, and the largest per-parameter gradient differences (the same numbers ``tests/test_authors_code.py``
holds to 1e-5; the fixture comes from ``benchmarks/authors_golden.py``). Runs in the project's venv::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/authors_golden_compare.py [--token-rules skip_special]

``--token-rules skip_special`` measures how far the earlier rules ([SEP] out of DupMAE's max-pool, [UNK]
out of its target) are from the authors' code on the same masks.
"""

from __future__ import annotations

import argparse
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
    our_mask_statistics,
    relative_differences,
    statistical_mismatches,
    terms_and_gradients,
)


def print_mask_statistics(loss, features: dict, golden: dict, draws: int = 2000) -> None:
    """How many of the mask statistics differ from the authors' collator by more than 5 standard errors."""
    theirs = {
        name.removeprefix("statistics/"): value
        for name, value in golden["tensors"].items()
        if name.startswith("statistics/")
    }
    ours = our_mask_statistics(loss, features, draws, seed=5)
    cells = sum(ours[name].numel() for name in ours)
    problems = statistical_mismatches(ours, theirs, draws, golden["statistics"]["draws"])
    print(f"  mask statistics ({draws} draws each): {len(problems)} of {cells} beyond 5 standard errors")
    for problem in problems[:3]:
        print(f"    {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--token-rules", default="authors", choices=["authors", "skip_special"])
    options = parser.parse_args()
    torch.set_num_threads(1)
    golden = json.loads(FIXTURE.with_suffix(".json").read_text(encoding="utf-8"))
    golden["tensors"] = load_file(str(FIXTURE.with_suffix(".safetensors")))
    with tempfile.TemporaryDirectory() as directory:
        BertModel(BertConfig(**golden["config"])).save_pretrained(directory)
        AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(directory)
        for method in LOSSES:
            loss, parameters = build_loss(method, golden, Path(directory), token_rules=options.token_rules)
            features, masks = authors_batch(golden, method)
            terms, gradients = terms_and_gradients(loss, parameters, features, masks)
            differences = relative_differences(method, golden, terms, gradients)
            print(f"## {method} (token_rules={options.token_rules!r})")
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
            if method == "retromae":
                print_mask_statistics(loss, features, golden)


if __name__ == "__main__":
    main()
