"""BEIR-style retrieval evaluation: folder reader, embedding cache, faiss search and pytrec_eval metrics.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``). The pipeline is::

    dataset = load_beir_folder("beir/scifact", split="test")
    retriever = DenseFaissRetriever(model, cache_dir=".cache/embeddings")
    result = evaluate_beir(retriever, dataset)  # {"metrics": {"NDCG@10": ..., "Recall@100": ...}, ...}

Search goes through the :class:`Retriever` protocol so that other representations (e.g. DupMAE's sparse vocabulary
vector + dense CLS vector) plug in without touching the reader or the metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

DEFAULT_K_VALUES = (1, 3, 5, 10, 100)
MRR_CUTOFF = 10  # MRR@10 is always reported, so at least this many documents are retrieved
QRELS_HEADER_NAMES = {
    "query-id",
    "query_id",
    "qid",
    "query",
    "corpus-id",
    "corpus_id",
    "doc-id",
    "docid",
    "score",
}
# BEIR's SentenceBERT wrapper and MTEB join a document's title and text with a single space, then strip.
TITLE_TEXT_SEPARATOR = " "


# ----------------------------------------------------------------------------------------------------------------------
# Reading a BEIR folder
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class BeirDataset:
    """A BEIR-layout dataset held in memory.

    Attributes:
        name: Folder name (e.g. ``"scifact"``).
        corpus: ``doc_id -> {"title": str, "text": str}``, in file order.
        queries: ``query_id -> text`` for every query in ``queries.jsonl``.
        qrels: ``query_id -> {doc_id: relevance}`` for the requested split (judgements of unknown queries dropped).
        stats: Counts gathered while reading (unknown ids in the qrels, etc.).
    """

    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    stats: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def corpus_texts(self, separator: str = TITLE_TEXT_SEPARATOR) -> tuple[list[str], list[str]]:
        """Return ``(doc_ids, texts)`` with each text = ``(title + separator + text).strip()`` as BEIR does."""
        doc_ids = list(self.corpus)
        texts = [join_title_and_text(self.corpus[doc_id], separator) for doc_id in doc_ids]
        return doc_ids, texts

    def judged_queries(self) -> dict[str, str]:
        """Queries that have at least one judgement in the split, in ``queries.jsonl`` order (what BEIR searches)."""
        return {qid: text for qid, text in self.queries.items() if qid in self.qrels}


def join_title_and_text(doc: Mapping[str, str], separator: str = TITLE_TEXT_SEPARATOR) -> str:
    """Join a BEIR document's title and text the way ``beir.retrieval.models.SentenceBERT`` does."""
    title = doc.get("title") or ""
    return (title + separator + (doc.get("text") or "")).strip()


def read_jsonl(path: Path, required_fields: Sequence[str]) -> Iterable[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-empty line, with errors that name the file and the line."""
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: malformed JSON line ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            for field_name in required_fields:
                if field_name not in record:
                    raise ValueError(f"{path}:{line_number}: missing required field {field_name!r}")
            yield line_number, record


def read_corpus(path: Path) -> dict[str, dict[str, str]]:
    """Read ``corpus.jsonl`` into ``doc_id -> {"title", "text"}``; an empty corpus or a duplicate id is an error."""
    corpus: dict[str, dict[str, str]] = {}
    for line_number, record in read_jsonl(path, required_fields=("_id", "text")):
        doc_id = str(record["_id"])
        if doc_id in corpus:
            raise ValueError(f"{path}:{line_number}: duplicate document id {doc_id!r}")
        corpus[doc_id] = {"title": record.get("title") or "", "text": record.get("text") or ""}
    if not corpus:
        raise ValueError(f"{path}: the corpus is empty (no documents)")
    return corpus


def read_queries(path: Path) -> dict[str, str]:
    """Read ``queries.jsonl`` into ``query_id -> text``."""
    queries: dict[str, str] = {}
    for line_number, record in read_jsonl(path, required_fields=("_id", "text")):
        query_id = str(record["_id"])
        if query_id in queries:
            raise ValueError(f"{path}:{line_number}: duplicate query id {query_id!r}")
        queries[query_id] = record["text"] or ""
    if not queries:
        raise ValueError(f"{path}: no queries")
    return queries


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Read a qrels file: ``query-id<TAB>corpus-id<TAB>score`` (header optional) or 4-column TREC ``qid 0 docid rel``."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if len(fields) == 4:  # TREC qrels: qid iteration docid relevance
                fields = [fields[0], fields[2], fields[3]]
            if len(fields) != 3:
                raise ValueError(f"{path}:{line_number}: expected 3 tab-separated fields, got {len(fields)}")
            query_id, doc_id, score = fields
            try:
                relevance = int(float(score))
            except ValueError:
                if line_number == 1 and looks_like_qrels_header(fields):  # "query-id corpus-id score"
                    continue
                raise ValueError(f"{path}:{line_number}: relevance {score!r} is not a number") from None
            qrels.setdefault(query_id, {})[doc_id] = relevance
    if not qrels:
        raise ValueError(f"{path}: no relevance judgements")
    return qrels


def looks_like_qrels_header(fields: Sequence[str]) -> bool:
    """A qrels header names its columns (BEIR: ``query-id corpus-id score``); any other non-numeric first line is a
    malformed judgement, not a header to skip."""
    return sum(field.strip().lower() in QRELS_HEADER_NAMES for field in fields) >= 2


def check_query_texts(queries: Mapping[str, str], judged: Iterable[str], path: Path) -> None:
    """Judged queries with empty text are scored like any other query but retrieve arbitrary documents: all empty is
    an error, some empty a warning naming how many and one id."""
    judged = list(judged)
    empty = [qid for qid in judged if not queries[qid].strip()]
    if empty and len(empty) == len(judged):
        raise ValueError(f"{path}: all {len(judged)} judged queries have empty text")
    if empty:
        warnings.warn(
            f"{path}: {len(empty)} of {len(judged)} judged queries have empty text (e.g. {empty[0]!r}); "
            "they are searched with an empty string",
            stacklevel=3,
        )


def check_qrels_ids(
    qrels: dict[str, dict[str, int]], queries: Mapping[str, str], corpus: Mapping[str, Any], qrels_path: Path
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Drop judgements of unknown queries, keep (but count) those naming unknown documents, and warn about both.

    Unknown documents are kept because pytrec_eval (and so BEIR) counts them as relevant-but-never-retrieved, which
    lowers recall; dropping them would make our numbers disagree with BEIR's on the same files.
    """
    unknown_queries = [qid for qid in qrels if qid not in queries]
    unknown_doc_judgements = sum(1 for rels in qrels.values() for doc_id in rels if doc_id not in corpus)
    if unknown_queries:
        warnings.warn(
            f"{qrels_path}: {len(unknown_queries)} query ids are not in queries.jsonl (e.g. {unknown_queries[0]!r}); "
            "their judgements are ignored",
            stacklevel=3,
        )
    if unknown_doc_judgements:
        warnings.warn(
            f"{qrels_path}: {unknown_doc_judgements} judgements name document ids that are not in corpus.jsonl; "
            "they count as relevant documents that can never be retrieved (as in BEIR/pytrec_eval)",
            stacklevel=3,
        )
    kept = {qid: rels for qid, rels in qrels.items() if qid in queries}
    if not kept:
        raise ValueError(f"{qrels_path}: none of the judged query ids is in queries.jsonl")
    stats = {
        "qrels_unknown_query_ids": len(unknown_queries),
        "qrels_unknown_doc_judgements": unknown_doc_judgements,
    }
    return kept, stats


def load_beir_folder(folder: str | Path, split: str = "test") -> BeirDataset:
    """Read a BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) with clear errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"BEIR folder not found: {folder}")
    paths = {
        "corpus": folder / "corpus.jsonl",
        "queries": folder / "queries.jsonl",
        "qrels": folder / "qrels" / f"{split}.tsv",
    }
    for kind, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"{kind} file not found: {path} (expected BEIR layout)")
    corpus = read_corpus(paths["corpus"])
    queries = read_queries(paths["queries"])
    qrels, stats = check_qrels_ids(read_qrels(paths["qrels"]), queries, corpus, paths["qrels"])
    check_query_texts(queries, qrels, paths["queries"])
    empty = sum(1 for qid in qrels if not queries[qid].strip())
    stats.update(
        {
            "corpus_size": len(corpus),
            "queries": len(queries),
            "judged_queries": len(qrels),
            "empty_queries": empty,
        }
    )
    return BeirDataset(
        name=folder.name, corpus=corpus, queries=queries, qrels=qrels, stats=stats, source=str(paths["qrels"])
    )


# ----------------------------------------------------------------------------------------------------------------------
# Embedding cache
# ----------------------------------------------------------------------------------------------------------------------


def model_fingerprint(model) -> str:
    """Hash of a SentenceTransformer's weights and module configuration: changes whenever its output could change."""
    import torch

    digest = hashlib.sha256()
    digest.update(repr(model).encode())
    digest.update(f"max_seq_length={getattr(model, 'max_seq_length', None)}".encode())
    digest.update(f"prompts={sorted(getattr(model, 'prompts', {}).items())}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def texts_fingerprint(ids: Sequence[str], texts: Sequence[str]) -> str:
    """Hash of the (id, text) pairs in order."""
    digest = hashlib.sha256()
    for doc_id, text in zip(ids, texts, strict=True):
        digest.update(doc_id.encode())
        digest.update(b"\x00")
        digest.update(text.encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:16]


PROGRESS_BATCHES = 4


class EmbeddingCache:
    """On-disk cache of corpus embeddings keyed by model fingerprint + corpus hash + encoding settings.

    Each entry is ``<cache_dir>/<key>.npy`` plus a small ``<key>.json`` describing it. Changing the model's weights,
    its configuration, the corpus ids/texts or the encoding settings gives a new key, so stale files are never read.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)

    def check_writable(self) -> None:
        """Before any encoding: the folder can be created and written (a read-only cache would otherwise fail
        only once the corpus is encoded). One-line ``PermissionError`` naming the folder."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            probe = self.cache_dir / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise PermissionError(
                f"embedding cache folder {self.cache_dir} is not writable ({error.strerror}): pass another "
                "cache folder (--cache-dir) or no cache (--no-cache)"
            ) from None

    @staticmethod
    def key(model_hash: str, corpus_hash: str, settings: Mapping[str, Any]) -> str:
        payload = json.dumps({"model": model_hash, "corpus": corpus_hash, **settings}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def load(self, key: str) -> np.ndarray | None:
        path = self.cache_dir / f"{key}.npy"
        if not path.is_file():
            return None
        return np.load(path)

    def save(self, key: str, embeddings: np.ndarray, description: Mapping[str, Any]) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / f"{key}.npy"
        tmp_path = self.cache_dir / f"{key}.tmp.npy"
        np.save(tmp_path, embeddings)
        tmp_path.replace(path)  # atomic: an interrupted run never leaves a truncated entry
        (self.cache_dir / f"{key}.json").write_text(json.dumps(dict(description), indent=2))
        return path


def encode_in_chunks(
    encode_fn, texts: Sequence[str], batch_size: int, chunk_size: int, show_progress_bar: bool, desc: str
) -> np.ndarray:
    """Encode ``texts`` chunk by chunk with one document-level progress bar that moves every
    ``PROGRESS_BATCHES`` batches (a 10,000-document chunk would otherwise sit at 0% for minutes); returns float32
    ``[n, dim]``."""
    step = max(1, min(chunk_size, batch_size * PROGRESS_BATCHES))
    parts = []
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not show_progress_bar) as bar:
        for start in range(0, len(texts), step):
            piece = list(texts[start : start + step])
            parts.append(
                np.asarray(encode_fn(piece, batch_size=batch_size, convert_to_numpy=True), dtype=np.float32)
            )
            bar.update(len(piece))
    return np.concatenate(parts, axis=0)


# ----------------------------------------------------------------------------------------------------------------------
# Retrievers
# ----------------------------------------------------------------------------------------------------------------------


@runtime_checkable
class Retriever(Protocol):
    """What :func:`evaluate_beir` needs from a search backend.

    ``index(corpus_ids, texts)`` builds the index over the documents (``texts[i]`` is the title+text of
    ``corpus_ids[i]``). ``search(query_ids, query_texts, top_k)`` returns ``{query_id: {doc_id: score}}`` with at most
    ``top_k`` documents per query, higher score = more relevant. The evaluation asks for ``top_k + 1`` and removes a
    document whose id equals the query id itself (``ignore_identical_ids``), so retrievers need not handle that.

    The dense default is :class:`DenseFaissRetriever`. A DupMAE retriever implements the same two methods: its
    ``index`` encodes each document into a dense CLS vector and a top-k sparse vocabulary vector and its ``search``
    scores ``<q_dense, d_dense> + <q_sparse, d_sparse>`` (e.g. by concatenating the dense vector with the densified
    sparse one and using :func:`faiss_top_k`). It may also expose ``info() -> dict`` for the report.
    """

    def index(self, corpus_ids: Sequence[str], texts: Sequence[str]) -> None: ...

    def search(
        self, query_ids: Sequence[str], query_texts: Sequence[str], top_k: int
    ) -> dict[str, dict[str, float]]: ...


SUPPORTED_SIMILARITIES = ("cosine", "dot", "euclidean")


def faiss_top_k(
    corpus_embeddings: np.ndarray,
    query_embeddings: np.ndarray,
    top_k: int,
    similarity: str = "dot",
    index_type: str = "flat",
    hnsw_m: int = 32,
    hnsw_ef_search: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k search with faiss; returns ``(scores, indices)`` both ``[n_queries, k]``, best first.

    ``similarity`` is ``"dot"`` (inner product on the vectors as given; pass L2-normalised vectors for cosine)
    or ``"euclidean"`` (score = minus the L2 distance). ``index_type`` is ``"flat"`` (exact) or ``"hnsw"``.
    """
    import faiss

    if similarity not in ("dot", "euclidean"):
        raise ValueError(f"faiss_top_k supports 'dot' or 'euclidean' similarity, got {similarity!r}")
    corpus_embeddings = np.ascontiguousarray(corpus_embeddings, dtype=np.float32)
    query_embeddings = np.ascontiguousarray(query_embeddings, dtype=np.float32)
    dim = corpus_embeddings.shape[1]
    metric = faiss.METRIC_INNER_PRODUCT if similarity == "dot" else faiss.METRIC_L2
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim) if similarity == "dot" else faiss.IndexFlatL2(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, metric)
        index.hnsw.efSearch = max(hnsw_ef_search, top_k)
    else:
        raise ValueError(f"unknown index type {index_type!r}; use 'flat' or 'hnsw'")
    index.add(corpus_embeddings)
    k = min(top_k, corpus_embeddings.shape[0])
    scores, indices = index.search(query_embeddings, k)
    if similarity == "euclidean":
        scores = -np.sqrt(np.maximum(scores, 0.0))
    return scores, indices


def hits_to_run(
    query_ids: Sequence[str], corpus_ids: Sequence[str], scores: np.ndarray, indices: np.ndarray
) -> dict[str, dict[str, float]]:
    """Turn faiss ``(scores, indices)`` into a BEIR run ``{qid: {doc_id: score}}`` (faiss pads with index -1)."""
    run: dict[str, dict[str, float]] = {}
    for row, query_id in enumerate(query_ids):
        run[query_id] = {
            corpus_ids[idx]: float(score)
            for score, idx in zip(scores[row], indices[row], strict=True)
            if idx >= 0
        }
    return run


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


class DenseFaissRetriever:
    """Dense retrieval with a SentenceTransformer and faiss.

    Documents are encoded with ``model.encode_document`` in chunks (progress bar) and cached on disk when
    ``cache_dir`` is given; queries with ``model.encode_query``. The score is the model's similarity
    (``model.similarity_fn_name``): cosine = inner product of L2-normalised vectors, dot = raw inner product,
    euclidean = minus the L2 distance. ``index_type="hnsw"`` builds an approximate HNSW index; its recall of the exact
    top-k is measured on every search and exposed through :meth:`info`.
    """

    def __init__(
        self,
        model,
        batch_size: int = 64,
        cache_dir: str | Path | None = None,
        chunk_size: int = 10_000,
        index_type: str = "flat",
        hnsw_m: int = 32,
        hnsw_ef_search: int = 128,
        similarity: str | None = None,
        show_progress_bar: bool = True,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
        if self.cache is not None:
            self.cache.check_writable()
        self.chunk_size = chunk_size
        self.index_type = index_type
        self.hnsw_m = hnsw_m
        self.hnsw_ef_search = hnsw_ef_search
        self.similarity = similarity or getattr(model, "similarity_fn_name", None) or "cosine"
        if self.similarity not in SUPPORTED_SIMILARITIES:
            raise ValueError(
                f"similarity {self.similarity!r} is not supported; use one of {SUPPORTED_SIMILARITIES}"
            )
        self.show_progress_bar = show_progress_bar
        self.corpus_ids: list[str] = []
        self.corpus_embeddings: np.ndarray | None = None
        self.stats: dict[str, Any] = {}

    def _prepare(self, embeddings: np.ndarray) -> np.ndarray:
        return l2_normalize(embeddings) if self.similarity == "cosine" else embeddings

    def encode_corpus(self, corpus_ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Corpus embeddings, read from the cache when possible; records timing and cache use in ``stats``."""
        settings = {"kind": "document", "version": 1}
        key = None
        if self.cache is not None:
            key = self.cache.key(
                model_fingerprint(self.model), texts_fingerprint(corpus_ids, texts), settings
            )
            cached = self.cache.load(key)
            if cached is not None and cached.shape[0] == len(texts):
                self.stats.update({"cache": "hit", "cache_key": key, "encode_seconds": 0.0})
                return cached
        start = time.perf_counter()
        embeddings = encode_in_chunks(
            self.model.encode_document,
            texts,
            batch_size=self.batch_size,
            chunk_size=self.chunk_size,
            show_progress_bar=self.show_progress_bar,
            desc="Encoding corpus",
        )
        seconds = time.perf_counter() - start
        self.stats.update(
            {
                "cache": "miss" if self.cache is not None else "disabled",
                "cache_key": key,
                "encode_seconds": seconds,
                "passages_per_second": len(texts) / seconds if seconds > 0 else None,
            }
        )
        if self.cache is not None and key is not None:
            self.cache.save(key, embeddings, {"n": len(texts), "dim": int(embeddings.shape[1]), **settings})
        return embeddings

    def index(self, corpus_ids: Sequence[str], texts: Sequence[str]) -> None:
        if len(corpus_ids) == 0:
            raise ValueError("cannot index an empty corpus")
        if len(corpus_ids) != len(texts):
            raise ValueError(f"{len(corpus_ids)} corpus ids but {len(texts)} texts")
        self.corpus_ids = list(corpus_ids)
        self.corpus_embeddings = self._prepare(self.encode_corpus(self.corpus_ids, texts))

    def encode_queries(self, query_texts: Sequence[str]) -> np.ndarray:
        embeddings = self.model.encode_query(
            list(query_texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return self._prepare(np.asarray(embeddings, dtype=np.float32))

    def search(
        self, query_ids: Sequence[str], query_texts: Sequence[str], top_k: int
    ) -> dict[str, dict[str, float]]:
        if self.corpus_embeddings is None:
            raise RuntimeError("call index() before search()")
        query_embeddings = self.encode_queries(query_texts)
        return self.search_embeddings(query_ids, query_embeddings, top_k)

    def search_embeddings(
        self, query_ids: Sequence[str], query_embeddings: np.ndarray, top_k: int
    ) -> dict[str, dict[str, float]]:
        """Search with already prepared query embeddings (normalised when the similarity is cosine)."""
        faiss_similarity = "euclidean" if self.similarity == "euclidean" else "dot"
        start = time.perf_counter()
        scores, indices = faiss_top_k(
            self.corpus_embeddings,
            query_embeddings,
            top_k,
            similarity=faiss_similarity,
            index_type=self.index_type,
            hnsw_m=self.hnsw_m,
            hnsw_ef_search=self.hnsw_ef_search,
        )
        self.stats["search_seconds"] = time.perf_counter() - start
        if self.index_type == "hnsw":
            _, exact_indices = faiss_top_k(
                self.corpus_embeddings, query_embeddings, top_k, similarity=faiss_similarity
            )
            self.stats["hnsw_recall_vs_exact"] = top_k_overlap(indices, exact_indices)
            logger.info(f"HNSW recall@{top_k} vs exact search: {self.stats['hnsw_recall_vs_exact']:.4f}")
        return hits_to_run(query_ids, self.corpus_ids, scores, indices)

    def info(self) -> dict[str, Any]:
        return {
            "retriever": "dense-faiss",
            "similarity": self.similarity,
            "index_type": self.index_type,
            **self.stats,
        }


def top_k_overlap(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k that the approximate search also returned."""
    overlaps = [
        len(set(a[a >= 0]) & set(e[e >= 0])) / max(len(e[e >= 0]), 1)
        for a, e in zip(approximate, exact, strict=True)
    ]
    return float(np.mean(overlaps))


# ----------------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------------


def drop_identical_ids(run: dict[str, dict[str, float]]) -> tuple[dict[str, dict[str, float]], int]:
    """Remove documents whose id equals the query id (BEIR/MTEB ``ignore_identical_ids``); returns (run, n_removed)."""
    removed = 0
    cleaned = {}
    for query_id, docs in run.items():
        cleaned[query_id] = {doc_id: score for doc_id, score in docs.items() if doc_id != query_id}
        removed += len(docs) - len(cleaned[query_id])
    return cleaned, removed


def truncate_run(run: dict[str, dict[str, float]], top_k: int) -> dict[str, dict[str, float]]:
    """Keep the ``top_k`` best documents per query, ordered as trec_eval orders them (score, then doc id, desc)."""
    truncated = {}
    for query_id, docs in run.items():
        ranked = sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)[:top_k]
        truncated[query_id] = dict(ranked)
    return truncated


def per_query_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """pytrec_eval's ``ndcg_cut_k``, ``map_cut_k``, ``recall_k`` and ``P_k`` of every judged query that has
    results, ``{query id: {measure: value}}``: what :func:`evaluate_run` averages, e.g. for paired tests."""
    import pytrec_eval

    run = {qid: dict(docs) for qid, docs in run.items()}
    if ignore_identical_ids:
        run, _ = drop_identical_ids(run)
    qrels = {qid: {doc_id: int(rel) for doc_id, rel in rels.items()} for qid, rels in qrels.items()}
    k_list = ",".join(str(k) for k in k_values)
    measures = {f"ndcg_cut.{k_list}", f"map_cut.{k_list}", f"recall.{k_list}", f"P.{k_list}"}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    ignore_identical_ids: bool = True,
) -> dict[str, float]:
    """NDCG@k, MAP@k, Recall@k, P@k (pytrec_eval, as ``beir.retrieval.evaluation.EvaluateRetrieval.evaluate``)
    plus MRR@10, averaged over the judged queries that have results. Values are in [0, 1], unrounded.
    """
    import pytrec_eval

    run = {qid: dict(docs) for qid, docs in run.items()}
    if ignore_identical_ids:
        run, _ = drop_identical_ids(run)
    qrels = {qid: {doc_id: int(rel) for doc_id, rel in rels.items()} for qid, rels in qrels.items()}
    per_query = per_query_metrics(qrels, run, k_values, ignore_identical_ids=False)
    if not per_query:
        raise ValueError("no query of the run has relevance judgements; check the query ids")
    metrics: dict[str, float] = {}
    for name, trec_name in (("NDCG", "ndcg_cut"), ("MAP", "map_cut"), ("Recall", "recall"), ("P", "P")):
        for k in k_values:
            metrics[f"{name}@{k}"] = float(
                np.mean([scores[f"{trec_name}_{k}"] for scores in per_query.values()])
            )
    reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(truncate_run(run, 10))
    metrics["MRR@10"] = float(np.mean([scores["recip_rank"] for scores in reciprocal.values()]))
    metrics["evaluated_queries"] = len(per_query)
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------------


def retrieve(
    retriever: Retriever, dataset: BeirDataset, top_k: int, ignore_identical_ids: bool = True
) -> dict[str, dict[str, float]]:
    """Index the corpus, search the judged queries and return a run with at most ``top_k`` docs per query."""
    doc_ids, texts = dataset.corpus_texts()
    retriever.index(doc_ids, texts)
    queries = dataset.judged_queries()
    run = retriever.search(
        list(queries), list(queries.values()), top_k + 1 if ignore_identical_ids else top_k
    )
    if ignore_identical_ids:
        run, _ = drop_identical_ids(run)
    return truncate_run(run, top_k)


def evaluate_beir(
    model_or_retriever,
    dataset: BeirDataset | str | Path,
    split: str = "test",
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    ignore_identical_ids: bool = True,
    **retriever_kwargs,
) -> dict[str, Any]:
    """Evaluate a SentenceTransformer (wrapped in :class:`DenseFaissRetriever`) or any :class:`Retriever` on a
    BEIR folder or :class:`BeirDataset`. Returns ``{"dataset", "split", "metrics", "counts", "retriever"}``."""
    k_values = check_k_values(k_values)
    if not isinstance(dataset, BeirDataset):
        dataset = load_beir_folder(dataset, split=split)
    if isinstance(model_or_retriever, Retriever):
        retriever = model_or_retriever
    else:
        retriever = DenseFaissRetriever(model_or_retriever, **retriever_kwargs)
    start = time.perf_counter()
    top_k = max(*k_values, MRR_CUTOFF)
    run = retrieve(retriever, dataset, top_k=top_k, ignore_identical_ids=ignore_identical_ids)
    metrics = evaluate_run(dataset.qrels, run, k_values=k_values, ignore_identical_ids=ignore_identical_ids)
    info = retriever.info() if hasattr(retriever, "info") else {"retriever": type(retriever).__name__}
    info["total_seconds"] = time.perf_counter() - start
    return {
        "dataset": dataset.name,
        "split": split,
        "metrics": metrics,
        "counts": dict(dataset.stats),
        "retriever": info,
        "ignore_identical_ids": ignore_identical_ids,
        "k_values": list(k_values),
        "source": str(dataset.source) if dataset.source else None,
        "seconds": info["total_seconds"],
    }


def check_k_values(k_values: Sequence[int]) -> tuple[int, ...]:
    """Positive, distinct cut-offs, sorted."""
    values = tuple(sorted({int(k) for k in k_values}))
    if not values or values[0] < 1:
        raise ValueError(f"k values must be positive integers, got {list(k_values)}")
    return values


def headline_metric_names(metrics: Mapping[str, float]) -> list[str]:
    """The two numbers a table shows: NDCG@10 and Recall@100 when computed, else NDCG / Recall at the largest k."""
    names = []
    for family, preferred in (("NDCG", 10), ("Recall", 100)):
        ks = sorted(int(key.split("@")[1]) for key in metrics if key.startswith(f"{family}@"))
        if ks:
            names.append(f"{family}@{preferred if preferred in ks else ks[-1]}")
    return names
