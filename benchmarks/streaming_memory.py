"""Resident memory while training RetroMAE from a streamed local corpus (issue #7, point 1).

Writes a corpus file (default 64 MiB of text lines), streams it with
:func:`retromae_st.data.load_text_corpus` (``datasets`` streaming, an ``IterableDataset``) and trains a
tiny BERT for ``--steps`` steps, reading the process's resident set size (RSS) before streaming, at
step 1, after warm-up (step 250) and every 250 steps to the end. Baselines in the same run: the corpus
file size (a run that loaded the corpus would grow by at least that much) and the RSS before streaming.

    OMP_NUM_THREADS=1 python benchmarks/streaming_memory.py --steps 2000 --batch-size 4 --max-seq-length 32
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from transformers import AutoTokenizer, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retromae_st import RetroMAELoss, load_cls_model  # noqa: E402
from retromae_st.data import load_text_corpus  # noqa: E402
from tests.conftest import build_tiny_bert, minilm_path  # noqa: E402

WORDS = (
    "retrieval passage query dense vector encoder decoder masked token sentence embedding model corpus "
    "training language search document index similarity ranking neural network batch gradient"
).split()


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_corpus(path: Path, size_mib: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    target = size_mib * 1024 * 1024
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            line = " ".join(rng.choices(WORDS, k=rng.randint(8, 40))) + "\n"
            handle.write(line)
            written += len(line)


class RSSRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.samples: list[tuple[int, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 or state.global_step % 250 == 0:
            self.samples.append((state.global_step, rss_mib()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--corpus-mib", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        write_corpus(corpus, args.corpus_mib)
        corpus_mib = corpus.stat().st_size / 2**20
        model_dir = build_tiny_bert(tmp / "tiny", AutoTokenizer.from_pretrained(minilm_path()))
        torch.manual_seed(0)
        model = load_cls_model(str(model_dir), max_seq_length=args.max_seq_length)
        before_stream = rss_mib()
        dataset, dropped = load_text_corpus(corpus)
        recorder = RSSRecorder()
        training_args = SentenceTransformerTrainingArguments(
            output_dir=str(tmp / "out"),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            logging_steps=500,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            loss=RetroMAELoss(model),
            callbacks=[recorder],
        )
        start = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - start

    rows = args.steps * args.batch_size
    samples = dict(recorder.samples)
    first, warm, last = samples[1], samples.get(250, samples[1]), recorder.samples[-1][1]
    print(
        f"corpus: {corpus_mib:.1f} MiB on disk; trained {args.steps} steps x {args.batch_size} = {rows} rows"
    )
    print(f"time: {elapsed:.0f} s ({args.steps / elapsed:.1f} steps/s); dropped rows: {dropped}")
    print("step  RSS MiB")
    for step, rss in recorder.samples:
        print(f"{step:>5}  {rss:8.1f}")
    print(
        f"RSS before streaming {before_stream:.1f} MiB; step 1 {first:.1f}; step 250 {warm:.1f}; end {last:.1f}"
    )
    print(
        f"growth step 1 -> end {last - first:+.1f} MiB; after warm-up (step 250 -> end) {last - warm:+.1f} MiB"
    )
    print(f"growth / corpus size = {(last - first) / corpus_mib:+.3f} (loading the corpus would be >= 1)")
    print(f"growth after warm-up / corpus size = {(last - warm) / corpus_mib:+.3f}")


if __name__ == "__main__":
    main()
