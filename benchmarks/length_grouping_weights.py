"""Issue #16: how length-grouped batches change the weight of a token, on the shared corpus unpacked.

    OMP_NUM_THREADS=1 python benchmarks/length_grouping_weights.py [--batch-size 16] [--max-seq-length 128]

Every step's loss is a mean over the step's labelled tokens, so a token weighs ``1 / (labelled tokens of
its batch)``: a short text batched with short texts (length grouping) weighs more than the same text in
a batch drawn at random. For the lines of ``../shared/data/corpus/corpus.txt`` (one text per line, as
without packing) with the all-MiniLM-L6-v2 tokenizer, truncated at ``--max-seq-length``, this computes,
over ``--epochs`` epochs (seeds 0, 1, ...), the mean weight of a token in each text-length bucket under
:class:`retromae_st.LengthGroupedBatchSampler` and under uniformly random batches, and their ratio. The
labelled tokens of a text are taken as its tokens without ``[CLS]``/``[SEP]`` (the decoder's labels;
the encoder's 30 % masked words are proportional to it). The same for the corpus packed into blocks of
``--max-seq-length`` tokens by :func:`retromae_st.pack_corpus`, drawn at random.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from benchmarks.common import SHARED, minilm_path  # noqa: E402
from retromae_st import LengthGroupedBatchSampler, pack_corpus  # noqa: E402

BUCKETS = [(0, 11), (12, 23), (24, 47), (48, 95), (96, 125), (126, 126)]


def random_batches(size: int, batch_size: int, seed: int) -> list[list[int]]:
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + batch_size] for i in range(0, size - batch_size + 1, batch_size)]


def grouped_batches(dataset: Dataset, lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    return list(LengthGroupedBatchSampler(dataset, batch_size, drop_last=True, lengths=lengths, seed=seed))


def token_weights(batches: list[list[int]], labelled: list[int]) -> tuple[list[float], list[int]]:
    """Per text: the summed weight of its tokens over the epoch, and how many times it was drawn."""
    weight, drawn = [0.0] * len(labelled), [0] * len(labelled)
    for batch in batches:
        total = sum(labelled[i] for i in batch)
        for i in batch:
            weight[i] += labelled[i] / total
            drawn[i] += 1
    return weight, drawn


def bucket_rows(labelled: list[int], weight: list[float], drawn: list[int], steps: int) -> dict[tuple, float]:
    """Mean weight of a token in each bucket, x the number of steps (1.0 = every token weighs the same)."""
    tokens_per_step = sum(labelled[i] * drawn[i] for i in range(len(labelled))) / steps
    rows = {}
    for low, high in BUCKETS:
        members = [i for i, n in enumerate(labelled) if low <= n <= high and drawn[i]]
        tokens = sum(labelled[i] * drawn[i] for i in members)
        rows[(low, high)] = (
            sum(weight[i] for i in members) / tokens * tokens_per_step if tokens else float("nan")
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    with open(SHARED / "corpus" / "corpus.txt", encoding="utf-8") as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    dataset = Dataset.from_dict({"text": lines})
    lengths = LengthGroupedBatchSampler.token_lengths(lines, tokenizer, args.max_seq_length)
    labelled = [n - 2 for n in lengths]
    packed, _ = pack_corpus(dataset, tokenizer, args.max_seq_length)
    packed_labelled = [
        n - 2 for n in LengthGroupedBatchSampler.token_lengths(list(packed["text"]), tokenizer, 10**6)
    ]

    results = {}
    for name, texts, make in (
        ("random", labelled, lambda seed: random_batches(len(labelled), args.batch_size, seed)),
        ("grouped", labelled, lambda seed: grouped_batches(dataset, lengths, args.batch_size, seed)),
        (
            "packed, random",
            packed_labelled,
            lambda seed: random_batches(len(packed_labelled), args.batch_size, seed),
        ),
    ):
        weight, drawn, steps = [0.0] * len(texts), [0] * len(texts), 0
        for seed in range(args.epochs):
            batches = make(seed)
            w, d = token_weights(batches, texts)
            weight = [a + b for a, b in zip(weight, w, strict=True)]
            drawn = [a + b for a, b in zip(drawn, d, strict=True)]
            steps += len(batches)
        results[name] = (bucket_rows(texts, weight, drawn, steps), texts)

    print(
        f"lines: {len(lines)}, batch {args.batch_size}, max_seq_length {args.max_seq_length}, {args.epochs} epochs"
    )
    print(
        "| labelled tokens of the text | texts | share of tokens | weight of a token, random | grouped | grouped / random |"
    )
    print("|---|---|---|---|---|---|")
    random_rows, grouped_rows = results["random"][0], results["grouped"][0]
    total = sum(labelled)
    for low, high in BUCKETS:
        members = [n for n in labelled if low <= n <= high]
        label = f"{low}–{high}" if high > low else f"{low} (truncated at {args.max_seq_length})"
        ratio = grouped_rows[(low, high)] / random_rows[(low, high)]
        print(
            f"| {label} | {len(members)} | {sum(members) / total:.1%} | {random_rows[(low, high)]:.3f} | "
            f"{grouped_rows[(low, high)]:.3f} | {ratio:.2f} |"
        )
    packed_rows, packed_texts = results["packed, random"]
    print(
        f"packed ({len(packed_texts)} blocks, random batches): weight of a token by bucket "
        + ", ".join(
            f"{low}–{high}: {value:.3f}" for (low, high), value in packed_rows.items() if value == value
        )
    )


if __name__ == "__main__":
    main()
