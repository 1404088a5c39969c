"""DupMAERetriever: exact sparse+dense search, BEIR evaluation and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retromae_st import DupMAELoss, DupMAERetriever, build_dupmae_model
from retromae_st.cli import RETRIEVERS, main
from retromae_st.dupmae_search import DupMAEEncoding, encode_dupmae
from retromae_st.eval.beir import Retriever, evaluate_beir


@pytest.fixture()
def dupmae_model(tiny_model):
    torch.manual_seed(0)
    return build_dupmae_model(DupMAELoss(tiny_model), top_k=12).eval()


def write_toy_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": f"d{i}", "title": f"title {i}", "text": f"document {i} about topic {i % 4}"}
        for i in range(25)
    ]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in corpus))
    queries = [{"_id": f"q{i}", "text": f"topic {i} document"} for i in range(3)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(query) + "\n" for query in queries))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq2\td6\t1\n"
    )
    return folder


def test_encoding_matches_model_encode(dupmae_model, sample_texts):
    texts = sample_texts[:9] + ["", "x"]
    compact = encode_dupmae(dupmae_model, texts, batch_size=4)
    dense = dupmae_model.encode(texts, convert_to_numpy=True, batch_size=4)
    np.testing.assert_allclose(compact.cls, dense[:, :64], atol=1e-5)
    rebuilt = compact.sparse_matrix(dupmae_model[1].vocab_size).toarray()
    np.testing.assert_allclose(rebuilt, dense[:, 64:], atol=1e-5)


def test_search_returns_the_exact_top_k_of_model_similarity(dupmae_model, sample_texts):
    corpus, queries = sample_texts[:40], sample_texts[40:47]
    retriever = DupMAERetriever(dupmae_model, batch_size=8, query_block_size=3)
    assert isinstance(retriever, Retriever)
    retriever.index([f"d{i}" for i in range(40)], corpus)
    run = retriever.search([f"q{i}" for i in range(7)], queries, top_k=5)
    scores = dupmae_model.similarity(
        dupmae_model.encode(queries, convert_to_tensor=True),
        dupmae_model.encode(corpus, convert_to_tensor=True),
    ).numpy()
    for row in range(7):
        hits = run[f"q{row}"]
        assert len(hits) == 5
        expected = np.sort(scores[row])[::-1][:5]
        np.testing.assert_allclose(sorted(hits.values(), reverse=True), expected, rtol=1e-4, atol=1e-3)
        for doc, score in hits.items():
            np.testing.assert_allclose(score, scores[row, int(doc[1:])], rtol=1e-4, atol=1e-3)


def test_index_holds_only_top_k_per_document(dupmae_model, sample_texts):
    retriever = DupMAERetriever(dupmae_model)
    retriever.index([str(i) for i in range(10)], sample_texts[:10])
    assert retriever.corpus.indices.shape == (10, 12)
    assert retriever.corpus.values.shape == (10, 12)
    assert retriever.corpus.cls.shape == (10, 64)
    assert retriever.info()["index_bytes"] < 10 * (64 + 2 * 12) * 4 + 100


def test_evaluate_beir_with_the_dupmae_retriever(dupmae_model, tmp_path):
    folder = write_toy_beir(tmp_path / "toy")
    result = evaluate_beir(DupMAERetriever(dupmae_model), folder, k_values=[1, 10])
    assert result["retriever"]["retriever"] == "dupmae-sparse-dense"
    values = [
        value for value in json.loads(json.dumps(result["metrics"])).values() if isinstance(value, float)
    ]
    assert values and all(0.0 <= value <= 1.0 for value in values)
    assert result["counts"]


def test_cli_beir_with_dupmae_retriever_loads_the_saved_model(dupmae_model, tmp_path):
    assert "dupmae" in RETRIEVERS
    dupmae_model.save(str(tmp_path / "dupmae"))
    write_toy_beir(tmp_path / "beir" / "toy")
    out = tmp_path / "out"
    code = main(
        ["eval", "beir", "--model", str(tmp_path / "dupmae"), "--data", str(tmp_path / "beir")]
        + ["--retriever", "dupmae", "--output", str(out), "--name", "dupmae-run", "--no-cache"]
    )
    assert code == 0
    result = json.loads((out / "dupmae-run.json").read_text())
    assert "dupmae" in json.dumps(result)


def test_bad_input_is_named(dupmae_model, tiny_model):
    with pytest.raises(ValueError, match="DupMAEPooling"):
        DupMAERetriever(tiny_model)
    with pytest.raises(ValueError, match="query_block_size"):
        DupMAERetriever(dupmae_model, query_block_size=0)
    retriever = DupMAERetriever(dupmae_model)
    with pytest.raises(RuntimeError, match="index"):
        retriever.search(["q"], ["text"], 3)
    with pytest.raises(ValueError, match="empty"):
        retriever.index([], [])
    with pytest.raises(ValueError, match="2 corpus ids but 1 texts"):
        retriever.index(["a", "b"], ["text"])
    retriever.index(["a"], ["text"])
    with pytest.raises(ValueError, match="top_k"):
        retriever.search(["q"], ["text"], 0)
    with pytest.raises(TypeError, match="list of strings"):
        encode_dupmae(dupmae_model, "a string")


def test_encoding_length_and_nbytes():
    encoding = DupMAEEncoding(
        np.zeros((3, 4), np.float32), np.zeros((3, 2), np.int32), np.zeros((3, 2), np.float32)
    )
    assert len(encoding) == 3 and encoding.nbytes() == 3 * (4 + 2 + 2) * 4
