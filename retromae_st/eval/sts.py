"""Semantic textual similarity (STS) evaluation: Spearman / Pearson x100 of the embedding similarity vs gold scores.

Readers cover SentEval's own ``downstream/`` layout and common single-file formats:

* ``STS/STS1{2..6}-en-test/STS.input.<subset>.txt`` (two tab-separated sentences per line) with
  ``STS.gs.<subset>.txt`` (gold score per line; an empty line means "no score" and the pair is skipped and counted);
* ``STS/STSBenchmark/sts-{train,dev,test}.csv`` (tab separated, no quoting: score in column 5, sentences in 6 and 7);
* ``SICK/SICK_{train,trial,test_annotated}.txt`` (tab separated with a header; ``relatedness_score``);
* any csv/tsv file with ``sentence1``, ``sentence2`` and ``score`` (or ``label``/``similarity_score``) columns, or a
  headerless STS-B style file, and a ``datasets`` folder (``save_to_disk``) with those columns.

Scores reported per task: every subset; for an STS year the "all" setting (subsets concatenated, as MTEB and the
SimCSE / RetroMAE papers report) and SentEval's mean and weighted mean (weights = number of scored pairs); for SICK-R
the test split and "all" over its splits (MTEB scores SICK-R on all 9,927 pairs). STS-B files reached directly
(``sts-dev.csv``) or inside a SentEval folder get the same names (task ``STSBenchmark``, subset ``dev``).
"""

from __future__ import annotations

import csv
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr

logger = logging.getLogger(__name__)

SCORE_COLUMNS = ("score", "label", "similarity_score", "relatedness_score")
STS_YEAR_FOLDER = re.compile(r"^(STS1[2-6])-en-test$")
STSB_FILE = re.compile(r"^sts-(train|dev|test)$")
SICK_SPLITS = {"SICK_train.txt": "train", "SICK_trial.txt": "trial", "SICK_test_annotated.txt": "test"}


@dataclass
class StsPairs:
    """Scored sentence pairs of one STS subset (e.g. STS12 ``MSRpar`` or STS-B ``dev``)."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    skipped: int = 0  # pairs whose gold score is empty
    source: str = ""

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class StsTask:
    """A named group of subsets.

    ``concatenate``: also report "all" (the subsets concatenated: an STS year, SICK-R). ``subset_means``: also report
    SentEval's mean / weighted mean over subsets (an STS year only; over train/dev/test splits they mean nothing).
    ``missing``: expected files that were not found (reported, never silently left out).
    """

    name: str
    subsets: list[StsPairs]
    concatenate: bool = True
    subset_means: bool = True
    missing: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------------------


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"STS file not found: {path}")
    return path.read_text(encoding="utf-8").splitlines()


def parse_score(value: str, path: Path | str, line_number: int) -> float:
    """A finite gold score; ``nan``, ``inf`` or text is an error naming the file and line (a single NaN would blank
    the correlation of its whole subset)."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}:{line_number}: gold score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise ValueError(f"{path}:{line_number}: gold score {value!r} is not a finite number")
    return score


def read_sts_input_and_gold(input_path: Path, gold_path: Path, name: str) -> StsPairs:
    """Read a SentEval ``STS.input.X.txt`` / ``STS.gs.X.txt`` pair line by line; empty gold lines are skipped."""
    inputs = read_lines(input_path)
    golds = read_lines(gold_path)
    if len(inputs) != len(golds):
        raise ValueError(
            f"{input_path} has {len(inputs)} lines but {gold_path} has {len(golds)}; they must align line by line"
        )
    pairs = StsPairs(name=name, sentences1=[], sentences2=[], scores=[], source=str(input_path))
    for line_number, (line, gold) in enumerate(zip(inputs, golds, strict=True), start=1):
        if not gold.strip():
            pairs.skipped += 1
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ValueError(f"{input_path}:{line_number}: expected two tab-separated sentences")
        pairs.sentences1.append(fields[0])
        pairs.sentences2.append(fields[1])
        pairs.scores.append(parse_score(gold.strip(), gold_path, line_number))
    return pairs


def read_sts_year(folder: Path) -> list[StsPairs]:
    """Every ``STS.input.<subset>.txt`` of a SentEval STS year folder with its gold file, sorted by subset name."""
    input_files = sorted(folder.glob("STS.input.*.txt"))
    if not input_files:
        raise FileNotFoundError(f"no STS.input.*.txt files in {folder}")
    subsets = []
    for input_path in input_files:
        name = input_path.name[len("STS.input.") : -len(".txt")]
        gold_path = folder / f"STS.gs.{name}.txt"
        if not gold_path.is_file():
            raise FileNotFoundError(f"gold file missing for {input_path}: expected {gold_path}")
        subsets.append(read_sts_input_and_gold(input_path, gold_path, name))
    return subsets


def read_stsbenchmark_file(path: Path, name: str | None = None) -> StsPairs:
    """Read an STS-B ``sts-*.csv`` file: tab separated, no quoting, score in column 5, sentences in columns 6-7."""
    pairs = StsPairs(
        name=name or path.stem.removeprefix("sts-"), sentences1=[], sentences2=[], scores=[], source=str(path)
    )
    for line_number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 7:
            raise ValueError(
                f"{path}:{line_number}: expected at least 7 tab-separated fields, got {len(fields)}"
            )
        if not fields[4].strip():
            pairs.skipped += 1
            continue
        pairs.scores.append(parse_score(fields[4], path, line_number))
        pairs.sentences1.append(fields[5])
        pairs.sentences2.append(fields[6])
    return pairs


def read_header_table(path: Path, name: str | None = None) -> StsPairs:
    """Read a csv/tsv (or SICK) file whose header names ``sentence1``/``sentence2`` (or ``sentence_A``/``sentence_B``)
    and a score column."""
    text = read_lines(path)
    if not text:
        raise ValueError(f"{path}: empty file")
    delimiter = "\t" if "\t" in text[0] else ","
    rows = list(
        csv.reader(
            text, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        )
    )
    header = [column.strip().lstrip("\ufeff").lower() for column in rows[0]]
    columns = {}
    for role, candidates in (
        ("s1", ("sentence1", "sentence_a", "sentence 1", "text1")),
        ("s2", ("sentence2", "sentence_b", "sentence 2", "text2")),
        ("score", SCORE_COLUMNS),
    ):
        found = [header.index(c) for c in candidates if c in header]
        if not found:
            raise ValueError(
                f"{path}: header {rows[0]} has no {role} column (looked for {', '.join(candidates)})"
            )
        columns[role] = found[0]
    pairs = StsPairs(name=name or path.stem, sentences1=[], sentences2=[], scores=[], source=str(path))
    for line_number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) <= max(columns.values()):
            raise ValueError(f"{path}:{line_number}: expected {len(header)} fields, got {len(row)}")
        if not row[columns["score"]].strip():
            pairs.skipped += 1
            continue
        pairs.scores.append(parse_score(row[columns["score"]], path, line_number))
        pairs.sentences1.append(row[columns["s1"]])
        pairs.sentences2.append(row[columns["s2"]])
    return pairs


def read_sts_file(path: Path) -> StsPairs:
    """A single csv/tsv/txt file: with a recognisable header, else STS-B's headerless layout."""
    first_line = read_lines(path)[:1]
    header = first_line[0].lower() if first_line else ""
    if "sentence" in header or "text1" in header:
        return read_header_table(path)
    return read_stsbenchmark_file(path, name=path.stem)


def read_sts_dataset(folder: Path) -> list[StsPairs]:
    """A ``datasets`` folder saved with ``save_to_disk`` (a Dataset or a DatasetDict of splits)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    loaded = load_from_disk(str(folder))
    splits = loaded.items() if isinstance(loaded, DatasetDict) else [(folder.name, loaded)]
    subsets = []
    for split_name, dataset in splits:
        assert isinstance(dataset, Dataset)
        score_column = next((c for c in SCORE_COLUMNS if c in dataset.column_names), None)
        for column in ("sentence1", "sentence2"):
            if column not in dataset.column_names:
                raise ValueError(
                    f"{folder} [{split_name}]: missing column {column!r} (has {dataset.column_names})"
                )
        if score_column is None:
            raise ValueError(
                f"{folder} [{split_name}]: no score column (looked for {', '.join(SCORE_COLUMNS)})"
            )
        pairs = StsPairs(name=split_name, sentences1=[], sentences2=[], scores=[], source=str(folder))
        for row, (s1, s2, score) in enumerate(
            zip(dataset["sentence1"], dataset["sentence2"], dataset[score_column], strict=True)
        ):
            if score is None:
                pairs.skipped += 1
                continue
            pairs.sentences1.append(s1)
            pairs.sentences2.append(s2)
            pairs.scores.append(parse_score(score, f"{folder} [{split_name}] {score_column!r} row", row))
        subsets.append(pairs)
    return subsets


def read_senteval_sts(downstream: str | Path) -> dict[str, StsTask]:
    """Every STS task present under a SentEval ``downstream/`` folder (or its ``STS/`` subfolder)."""
    downstream = Path(downstream)
    if not downstream.is_dir():
        raise FileNotFoundError(f"SentEval folder not found: {downstream}")
    sts_root = downstream / "STS" if (downstream / "STS").is_dir() else downstream
    tasks: dict[str, StsTask] = {}
    for folder in sorted(sts_root.iterdir()) if sts_root.is_dir() else []:
        match = STS_YEAR_FOLDER.match(folder.name)
        if match and folder.is_dir():
            tasks[match.group(1)] = StsTask(match.group(1), read_sts_year(folder), concatenate=True)
    benchmark = sts_root / "STSBenchmark"
    if benchmark.is_dir():
        files = [benchmark / f"sts-{split}.csv" for split in ("train", "dev", "test")]
        subsets = [read_stsbenchmark_file(path) for path in files if path.is_file()]
        if subsets:
            missing = [str(path) for path in files if not path.is_file()]
            tasks["STSBenchmark"] = StsTask(
                "STSBenchmark", subsets, concatenate=False, subset_means=False, missing=missing
            )
    sick = downstream / "SICK"
    if sick.is_dir():
        subsets = [
            read_header_table(sick / f, name=split)
            for f, split in SICK_SPLITS.items()
            if (sick / f).is_file()
        ]
        if subsets:
            missing = [str(sick / f) for f in SICK_SPLITS if not (sick / f).is_file()]
            tasks["SICK-R"] = StsTask(
                "SICK-R", subsets, concatenate=len(subsets) > 1, subset_means=False, missing=missing
            )
    if not tasks:
        raise FileNotFoundError(
            f"no STS task found under {downstream} (expected STS/STS1x-en-test, STS/STSBenchmark or SICK/)"
        )
    return tasks


def read_sts_path(path: str | Path) -> dict[str, StsTask]:
    """Dispatch on what ``path`` is: a SentEval folder, an STS year folder, a ``datasets`` folder or a single file."""
    path = Path(path)
    if path.is_file():
        split = STSB_FILE.match(path.stem)
        if split:  # an STS-B file keeps STS-B's names, whether reached as a file or inside a SentEval folder
            pairs = read_sts_file(path)
            pairs.name = split.group(1)
            return {"STSBenchmark": StsTask("STSBenchmark", [pairs], concatenate=False, subset_means=False)}
        return {path.stem: StsTask(path.stem, [read_sts_file(path)], concatenate=False, subset_means=False)}
    if not path.is_dir():
        raise FileNotFoundError(f"STS data not found: {path}")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return {path.name: StsTask(path.name, read_sts_dataset(path), concatenate=False, subset_means=False)}
    if list(path.glob("STS.input.*.txt")):
        match = STS_YEAR_FOLDER.match(path.name)
        name = match.group(1) if match else path.name
        return {name: StsTask(name, read_sts_year(path), concatenate=True)}
    return read_senteval_sts(path)


def read_sts_paths(paths: Sequence[str | Path]) -> dict[str, StsTask]:
    """Read every path (see :func:`read_sts_path`) into one set of tasks. The same subset of the same task reached
    twice (e.g. STS-B dev as a file and inside a SentEval folder) is an error naming both files; different subsets of
    one task (STS-B train/dev from a folder, test from a file) are merged."""
    tasks: dict[str, StsTask] = {}
    for path in paths:
        for name, task in read_sts_path(path).items():
            if name not in tasks:
                tasks[name] = task
                continue
            known = {pairs.name: pairs for pairs in tasks[name].subsets}
            for pairs in task.subsets:
                if pairs.name in known:
                    raise ValueError(
                        f"STS task {name} subset {pairs.name!r} given twice: {known[pairs.name].source} and "
                        f"{pairs.source}; pass only one of them"
                    )
            merged = tasks[name]
            merged.subsets = merged.subsets + task.subsets
            merged.missing = [
                m
                for m in merged.missing + task.missing
                if Path(m).name not in {Path(p.source).name for p in merged.subsets}
            ]
    return tasks


# ----------------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------------


def pairwise_similarity(
    embeddings1: np.ndarray, embeddings2: np.ndarray, similarity: str = "cosine"
) -> np.ndarray:
    """Row-wise similarity with sentence-transformers' own pairwise functions (as its EmbeddingSimilarityEvaluator)."""
    from sentence_transformers.util import (
        pairwise_cos_sim,
        pairwise_dot_score,
        pairwise_euclidean_sim,
        pairwise_manhattan_sim,
    )

    functions = {
        "cosine": pairwise_cos_sim,
        "dot": pairwise_dot_score,
        "euclidean": pairwise_euclidean_sim,
        "manhattan": pairwise_manhattan_sim,
    }
    if similarity not in functions:
        raise ValueError(f"unknown similarity {similarity!r}; use one of {sorted(functions)}")
    return functions[similarity](embeddings1, embeddings2).detach().cpu().numpy()


def correlations(predicted: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson x100 (scipy, as ST's EmbeddingSimilarityEvaluator)."""
    if len(gold) < 2:
        raise ValueError(f"need at least 2 scored pairs to compute a correlation, got {len(gold)}")
    return {
        "spearman": float(spearmanr(gold, predicted)[0] * 100),
        "pearson": float(pearsonr(gold, predicted)[0] * 100),
    }


def encode_unique(
    model, sentences: Sequence[str], batch_size: int, show_progress_bar: bool
) -> dict[str, np.ndarray]:
    """Encode each distinct sentence once; returns ``sentence -> embedding``."""
    unique = list(dict.fromkeys(sentences))
    embeddings = model.encode(
        unique, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=show_progress_bar
    )
    return dict(zip(unique, embeddings, strict=True))


def score_subset(lookup: Mapping[str, np.ndarray], pairs: StsPairs, similarity: str) -> np.ndarray:
    embeddings1 = np.stack([lookup[s] for s in pairs.sentences1])
    embeddings2 = np.stack([lookup[s] for s in pairs.sentences2])
    return pairwise_similarity(embeddings1, embeddings2, similarity)


def evaluate_sts_task(
    model, task: StsTask, batch_size: int = 64, similarity: str = "cosine", show_progress_bar: bool = False
) -> dict[str, Any]:
    """Score one task: per subset, then "all" (concatenated) and, for an STS year, mean and weighted mean over
    subsets. Sentences of the whole task are encoded once; the result names each subset's file and its timings.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    lookup = encode_unique(
        model,
        [s for pairs in task.subsets for s in (*pairs.sentences1, *pairs.sentences2)],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
    )
    subsets: dict[str, dict[str, Any]] = {}
    all_predicted, all_gold = [], []
    for pairs in task.subsets:
        predicted = score_subset(lookup, pairs, similarity)
        subsets[pairs.name] = {
            **correlations(predicted, pairs.scores),
            "n": len(pairs),
            "skipped": pairs.skipped,
            "source": pairs.source,
        }
        all_predicted.extend(predicted.tolist())
        all_gold.extend(pairs.scores)
    result: dict[str, Any] = {"subsets": subsets, "similarity": similarity}
    if task.subset_means:
        weights = np.array([s["n"] for s in subsets.values()], dtype=float)
        for metric in ("spearman", "pearson"):
            values = np.array([s[metric] for s in subsets.values()])
            result[f"mean_{metric}"] = float(values.mean())
            result[f"wmean_{metric}"] = float((values * weights).sum() / weights.sum())
    if task.concatenate:
        result["all"] = {
            **correlations(all_predicted, all_gold),
            "n": len(all_gold),
            "skipped": sum(p.skipped for p in task.subsets),
            "subsets": list(subsets),
        }
    result["headlines"] = headlines(task, result)
    result["main"] = result["headlines"][0]
    result["missing_files"] = list(task.missing)
    result["seconds"] = time.perf_counter() - wall
    result["cpu_seconds"] = time.process_time() - cpu
    return result


def all_setting_label(task: StsTask) -> str:
    """``all`` for an STS year; for SICK-R ``all (MTEB)`` when its three splits are there (MTEB's 9,927 pairs), else
    the splits it covers, so that a partial concatenation is never mistaken for MTEB's figure."""
    if task.subset_means:
        return "all"
    names = [pairs.name for pairs in task.subsets]
    if task.name == "SICK-R" and set(names) == set(SICK_SPLITS.values()):
        return "all (MTEB)"
    return "all (" + "+".join(names) + ")"


def headlines(task: StsTask, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The numbers a table shows, each with its setting: an STS year's "all"; a split task's test (or last) split,
    plus its "all" when it has one (SICK-R test and SICK-R all)."""
    if task.subset_means and "all" in result:
        return [{"setting": "all", "spearman": result["all"]["spearman"]}]
    names = [pairs.name for pairs in task.subsets]
    chosen = "test" if "test" in names else names[-1]
    rows = [{"setting": chosen, "spearman": result["subsets"][chosen]["spearman"]}]
    if "all" in result:
        rows.append({"setting": all_setting_label(task), "spearman": result["all"]["spearman"]})
    return rows


def evaluate_sts(
    model,
    tasks: Mapping[str, StsTask],
    batch_size: int = 64,
    similarity: str = "cosine",
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """Evaluate every task; returns ``{"tasks": {name: result}, "similarity": ...}``."""
    start = time.perf_counter()
    results = {}
    for name, task in tasks.items():
        logger.info(f"STS: evaluating {name} ({sum(len(p) for p in task.subsets)} pairs)")
        results[name] = evaluate_sts_task(model, task, batch_size, similarity, show_progress_bar)
    missing = [m for task in tasks.values() for m in task.missing]
    return {
        "tasks": results,
        "similarity": similarity,
        "missing_files": missing,
        "seconds": time.perf_counter() - start,
    }


def evaluate_sts_folder(model, path: str | Path | Sequence[str | Path], **kwargs) -> dict[str, Any]:
    """Read every STS task found at ``path`` (one path or several, see :func:`read_sts_paths`) and evaluate it."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return evaluate_sts(model, read_sts_paths(paths), **kwargs)
