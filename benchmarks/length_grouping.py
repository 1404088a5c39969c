"""Length-grouped vs uniformly random batches on a corpus of mixed lengths: padded tokens and step time.

    OMP_NUM_THREADS=1 python benchmarks/length_grouping.py [--corpus FILE.jsonl ...] [--batch-size 16]
        [--max-seq-length 256] [--steps 12] [--json out.json]

Both samplers see the same corpus with the same seed: ``LengthGroupedBatchSampler`` (``pretrain``'s
default) and the trainer's default (a ``RandomSampler`` cut into batches). Reported, same run:

- over one whole epoch: the tokens the batches hold after padding to their longest row (what the
  encoder and decoder compute on), against the tokens of the texts themselves;
- over the first ``--steps`` batches of each: ms per training step of ``RetroMAELoss`` on the real
  all-MiniLM-L6-v2 (forward with masking, backward, AdamW), timed in process CPU time, steps
  interleaved between the two samplers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sentence_transformers.base.sampler import DefaultBatchSampler  # noqa: E402
from torch.utils.data import RandomSampler  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from benchmarks.common import SHARED, minilm_path  # noqa: E402
from retromae_st import LengthGroupedBatchSampler, RetroMAELoss, load_cls_model  # noqa: E402

BEIR = SHARED / "beir_subsets"
DEFAULT_CORPORA = [BEIR / "msmarco-5k" / "corpus.jsonl", BEIR / "dbpedia-entity-5k" / "corpus.jsonl"]


def read_texts(paths: list[Path]) -> list[str]:
    texts = []
    for path in paths:
        with path.open(encoding="utf-8") as handle:
            texts += [json.loads(line)["text"].strip() for line in handle if line.strip()]
    return [text for text in texts if text]


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", nargs="+", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per sampler")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)

    texts = read_texts(args.corpus)
    dataset = Dataset.from_dict({"text": texts})
    model = load_cls_model(minilm_path(), max_seq_length=args.max_seq_length)
    start = time.process_time()
    lengths = LengthGroupedBatchSampler.token_lengths(texts, model.tokenizer, args.max_seq_length)
    tokenize_s = time.process_time() - start
    samplers = {
        "random": DefaultBatchSampler(
            RandomSampler(dataset, generator=torch.Generator().manual_seed(args.seed)),
            batch_size=args.batch_size,
            drop_last=False,
        ),
        "grouped": LengthGroupedBatchSampler(
            dataset, args.batch_size, False, generator=torch.Generator(), seed=args.seed, lengths=lengths
        ),
    }
    epochs = {name: list(sampler) for name, sampler in samplers.items()}
    content = sum(lengths)
    result = {
        "texts": len(texts),
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "mean_tokens": content / len(texts),
        "truncated_share": sum(length == args.max_seq_length for length in lengths) / len(texts),
        "length_measuring_s": tokenize_s,
        "content_tokens": content,
    }
    for name, batches in epochs.items():
        result[f"{name}_padded_tokens"] = padded_tokens(batches, lengths)
    result["padded_ratio"] = result["grouped_padded_tokens"] / result["random_padded_tokens"]
    print(
        f"{len(texts)} texts, mean {result['mean_tokens']:.1f} tokens, {100 * result['truncated_share']:.1f}% "
        f"truncated at {args.max_seq_length}; token lengths measured in {tokenize_s:.1f} s CPU"
    )
    for name in epochs:
        padded = result[f"{name}_padded_tokens"]
        print(f"epoch, {name:>7}: {padded} padded tokens ({content / padded:.1%} of them real)")
    print(f"grouped / random padded tokens: {result['padded_ratio']:.3f}")

    torch.manual_seed(0)
    loss = RetroMAELoss(model).train()
    optimizer = torch.optim.AdamW(loss.parameters(), lr=1e-5)

    def step(batch: list[int]) -> float:
        features = model.preprocess([texts[i] for i in batch])
        begin = time.process_time()
        total = sum(loss([features]).values())
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.process_time() - begin

    step(epochs["random"][-1])  # warm-up
    times = {name: [] for name in epochs}
    for index in range(args.steps):
        for name, batches in epochs.items():
            times[name].append(step(batches[index]))
    for name, batches in epochs.items():
        result[f"{name}_step_ms_mean"] = 1000 * statistics.mean(times[name])
        result[f"{name}_steps_padded_tokens"] = padded_tokens(batches[: args.steps], lengths)
    result["step_ratio"] = result["grouped_step_ms_mean"] / result["random_step_ms_mean"]
    result["steps_padded_ratio"] = (
        result["grouped_steps_padded_tokens"] / result["random_steps_padded_tokens"]
    )
    for name in epochs:
        print(
            f"first {args.steps} steps, {name:>7}: {result[f'{name}_step_ms_mean']:.0f} ms/step (CPU time), "
            f"{result[f'{name}_steps_padded_tokens']} padded tokens"
        )
    print(
        f"grouped / random: step time {result['step_ratio']:.3f}, "
        f"padded tokens of those steps {result['steps_padded_ratio']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
