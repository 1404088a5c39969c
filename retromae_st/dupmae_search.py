"""Memory-bounded corpus index and search for DupMAE's ``[CLS]`` + top-k OT representation.

Each document is stored as its dense ``[CLS]`` vector plus the ``top_k`` indices (int32) and values
(float32) of its OT vector, i.e. ``4 x (dim + 2k)`` bytes: a 100k-passage corpus with BERT-base and
``k = 256`` takes about 0.5 GB. Scores are exact: ``<q_cls, d_cls> + <q_ot, d_ot>``, computed per block
of queries as a dense matrix product plus a sparse (CSR corpus) x dense (query block) product, with
the top hits taken by ``argpartition``. Nothing vocabulary-sized is held per document, and encoding
never materialises more than ``DupMAEPooling.chunk_size x V`` logits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse
from sentence_transformers.util import batch_to_device
from tqdm.auto import tqdm

from retromae_st.dupmae_pooling import DupMAEPooling


@dataclass
class DupMAEEncoding:
    """Compact DupMAE representations of ``n`` texts."""

    cls: np.ndarray  # float32 (n, dim)
    indices: np.ndarray  # int32 (n, k)
    values: np.ndarray  # float32 (n, k)

    def __len__(self) -> int:
        return self.cls.shape[0]

    def sparse_matrix(self, vocab_size: int) -> sparse.csr_matrix:
        """The OT vectors as a CSR ``(n, vocab_size)`` matrix."""
        n, k = self.indices.shape
        indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
        return sparse.csr_matrix((self.values.ravel(), self.indices.ravel(), indptr), shape=(n, vocab_size))

    def nbytes(self) -> int:
        return self.cls.nbytes + self.indices.nbytes + self.values.nbytes


def find_dupmae_pooling(model) -> DupMAEPooling:
    for module in model:
        if isinstance(module, DupMAEPooling):
            return module
    raise ValueError(
        "model has no DupMAEPooling module: build one with retromae_st.build_dupmae_model(loss) "
        "or load a saved DupMAE model"
    )


@torch.no_grad()
def encode_dupmae(
    model, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False, desc: str = "Encoding"
) -> DupMAEEncoding:
    """``[CLS]`` vectors and top-k OT indices/values of ``texts``, without the vocabulary-sized dense output.

    Texts are sorted by length so that batches carry little padding, as ``SentenceTransformer.encode`` does.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    pooling = find_dupmae_pooling(model)
    model.eval()
    order = np.argsort([-len(text) for text in texts], kind="stable")
    cls = np.zeros((len(texts), pooling.cls_dim), dtype=np.float32)
    indices = np.zeros((len(texts), pooling.top_k), dtype=np.int32)
    values = np.zeros((len(texts), pooling.top_k), dtype=np.float32)
    with pooling.sparse_only():
        for start in tqdm(
            range(0, len(texts), batch_size), desc=desc, disable=not show_progress_bar, unit="batch"
        ):
            rows = order[start : start + batch_size]
            features = _preprocess(model, [texts[row] for row in rows])
            features = batch_to_device(features, model.device)
            out = model(features)
            cls[rows] = out["cls_embedding"].float().cpu().numpy()
            indices[rows] = out["ot_indices"].cpu().numpy()
            values[rows] = out["ot_values"].float().cpu().numpy()
    return DupMAEEncoding(cls, indices, values)


def _preprocess(model, texts: list[str]) -> dict[str, torch.Tensor]:
    # ST 6 renamed ``tokenize`` to ``preprocess``.
    return model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)


class DupMAERetriever:
    """The :class:`retromae_st.eval.beir.Retriever` for DupMAE models: exact ``[CLS]`` + top-k OT search.

    ``index`` encodes the corpus into compact representations (see :class:`DupMAEEncoding`);
    ``search`` scores query blocks of ``query_block_size`` against the whole corpus. Peak search memory
    beyond the index is about ``query_block_size x (n_docs + vocab_size) x 8`` bytes.

    Args:
        model: A SentenceTransformer whose last module is a :class:`retromae_st.DupMAEPooling`.
        batch_size: Encoding batch size.
        query_block_size: Number of queries scored at once.
        show_progress_bar: Show a progress bar while encoding the corpus.
    """

    def __init__(
        self, model, batch_size: int = 64, query_block_size: int = 64, show_progress_bar: bool = False
    ) -> None:
        self.model = model
        self.pooling = find_dupmae_pooling(model)
        for name, value in (("batch_size", batch_size), ("query_block_size", query_block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.batch_size = batch_size
        self.query_block_size = query_block_size
        self.show_progress_bar = show_progress_bar
        self.corpus_ids: list[str] = []
        self.corpus: DupMAEEncoding | None = None
        self._corpus_matrix: sparse.csr_matrix | None = None
        self.stats: dict[str, Any] = {}

    def index(self, corpus_ids: Sequence[str], texts: Sequence[str]) -> None:
        if len(corpus_ids) == 0:
            raise ValueError("cannot index an empty corpus")
        if len(corpus_ids) != len(texts):
            raise ValueError(f"{len(corpus_ids)} corpus ids but {len(texts)} texts")
        start = time.perf_counter()
        corpus = encode_dupmae(
            self.model, list(texts), self.batch_size, self.show_progress_bar, desc="Encoding corpus"
        )
        self.index_encoded(corpus_ids, corpus)
        self.stats["encode_seconds"] = time.perf_counter() - start

    def index_encoded(self, corpus_ids: Sequence[str], corpus: DupMAEEncoding) -> None:
        """Index already encoded documents (e.g. loaded from disk)."""
        if len(corpus_ids) != len(corpus):
            raise ValueError(f"{len(corpus_ids)} corpus ids but {len(corpus)} encoded documents")
        self.corpus_ids = list(corpus_ids)
        self.corpus = corpus
        self._corpus_matrix = corpus.sparse_matrix(self.pooling.vocab_size)
        self.stats["index_bytes"] = corpus.nbytes() + self._corpus_matrix.indptr.nbytes

    def search(
        self, query_ids: Sequence[str], query_texts: Sequence[str], top_k: int
    ) -> dict[str, dict[str, float]]:
        if self.corpus is None:
            raise RuntimeError("call index() before search()")
        if len(query_ids) != len(query_texts):
            raise ValueError(f"{len(query_ids)} query ids but {len(query_texts)} query texts")
        queries = encode_dupmae(self.model, list(query_texts), self.batch_size)
        return self.search_encoded(query_ids, queries, top_k)

    def search_encoded(
        self, query_ids: Sequence[str], queries: DupMAEEncoding, top_k: int
    ) -> dict[str, dict[str, float]]:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        start = time.perf_counter()
        k = min(top_k, len(self.corpus))
        run: dict[str, dict[str, float]] = {}
        for block in range(0, len(queries), self.query_block_size):
            rows = slice(block, block + self.query_block_size)
            scores = self.block_scores(
                DupMAEEncoding(queries.cls[rows], queries.indices[rows], queries.values[rows])
            )
            best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(scores, best, axis=1)
            ranking = np.argsort(-best_scores, axis=1, kind="stable")
            for row, query_id in enumerate(list(query_ids)[rows]):
                hits = best[row, ranking[row]]
                run[query_id] = {self.corpus_ids[doc]: float(scores[row, doc]) for doc in hits}
        self.stats["search_seconds"] = time.perf_counter() - start
        return run

    def block_scores(self, queries: DupMAEEncoding) -> np.ndarray:
        """Exact scores of a block of queries against the whole corpus, ``(n_queries, n_docs)``."""
        query_dense = queries.sparse_matrix(self.pooling.vocab_size).toarray()
        sparse_scores = np.asarray((self._corpus_matrix @ query_dense.T).T)
        return queries.cls @ self.corpus.cls.T + sparse_scores

    def info(self) -> dict[str, Any]:
        return {
            "retriever": "dupmae-sparse-dense",
            "similarity": "dot",
            "top_k_ot": self.pooling.top_k,
            "cls_dim": self.pooling.cls_dim,
            **self.stats,
        }
