"""SentEval transfer tasks: frozen sentence embeddings + logistic regression, with SentEval's protocol by default.

=========  ==========================================  ============================================================
task       data (SentEval ``downstream/`` layout)      classifier (SentEval's name)
=========  ==========================================  ============================================================
MR         ``MR/rt-polarity.{pos,neg}``                10-fold CV; C by inner 10-fold CV per outer train split
CR         ``CR/custrev.{pos,neg}``                    (``InnerKFoldClassifier``)
SUBJ       ``SUBJ/subj.{objective,subjective}``        same
MPQA       ``MPQA/mpqa.{pos,neg}``                     same
SST2       ``SST/binary/sentiment-{train,dev,test}``   C chosen on dev (fit on train), test accuracy (``SplitClassifier``)
SST5       ``SST/fine/sentiment-{train,dev,test}``     same
TREC       ``TREC/{train_5500,TREC_10}.label``         C by k-fold CV on train, fit on train, test (``KFoldClassifier``)
MRPC       ``MRPC/msr_paraphrase_{train,test}.txt``    as TREC on pair features; accuracy and F1
SICK-E     ``SICK/SICK_{train,trial,test_annotated}``  as SST on pair features
=========  ==========================================  ============================================================

Two protocols (:data:`PROTOCOLS`):

* ``"senteval"`` (default) is SentEval's non-PyTorch setting exactly (``senteval/tools/validation.py``, the task
  files): samples sorted by (token count, label) before the seeded stratified folds; pair features
  ``[|u - v|, u * v]``; C grid ``2**-2 .. 2**3`` for the inner-k-fold and split classifiers and ``2**-1 .. 2**5`` for
  the k-fold one; scikit-learn's default ``max_iter=100``; accuracies rounded to 2 decimals before C is chosen and
  before folds are averaged; empty lines of the .pos/.neg files kept as (empty) samples.
* ``"extended"``: file order, pair features ``[u, v, |u - v|, u * v]``, grid ``2**-2 .. 2**3`` everywhere,
  ``max_iter=1000``, no rounding, empty lines dropped.

Sentences are whitespace-normalised (split on whitespace, joined by one space: what SentEval's batcher receives).
Fits that stop at ``max_iter`` are counted (``unconverged_fits`` of ``fits``), not hidden.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

DEFAULT_SEED = 1111  # SentEval's default seed
TRANSFER_TASKS = ("MR", "CR", "SUBJ", "MPQA", "SST2", "SST5", "TREC", "MRPC", "SICK-E")
# SentEval's label ids (trec.py tgt2idx, sick.py label2id); the length sort breaks ties by these ids
TREC_LABELS = {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3, "LOC": 4, "NUM": 5}
SICK_LABELS = {"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2}
REQUIRED_FILES = {
    "MR": ["MR/rt-polarity.pos", "MR/rt-polarity.neg"],
    "CR": ["CR/custrev.pos", "CR/custrev.neg"],
    "SUBJ": ["SUBJ/subj.objective", "SUBJ/subj.subjective"],
    "MPQA": ["MPQA/mpqa.pos", "MPQA/mpqa.neg"],
    "SST2": [f"SST/binary/sentiment-{s}" for s in ("train", "dev", "test")],
    "SST5": [f"SST/fine/sentiment-{s}" for s in ("train", "dev", "test")],
    "TREC": ["TREC/train_5500.label", "TREC/TREC_10.label"],
    "MRPC": ["MRPC/msr_paraphrase_train.txt", "MRPC/msr_paraphrase_test.txt"],
    "SICK-E": ["SICK/SICK_train.txt", "SICK/SICK_trial.txt", "SICK/SICK_test_annotated.txt"],
}


@dataclass(frozen=True)
class TransferProtocol:
    """How the classifier is run: features, C grids, solver budget, data order, rounding.

    Args:
        name: ``"senteval"`` or ``"extended"``.
        pair_features: ``"difference_product"`` (``[|u-v|, u*v]``, SentEval) or ``"full"`` (``[u, v, |u-v|, u*v]``).
        inner_kfold_grid: C values of the inner-k-fold classifier (MR, CR, SUBJ, MPQA).
        kfold_grid: C values of the k-fold classifier (TREC, MRPC).
        split_grid: C values of the split classifier (SST2, SST5, SICK-E).
        max_iter: ``LogisticRegression(max_iter=...)``.
        sort_by_length: sort each split by (token count, label) as SentEval does before building its folds.
        round_scores: round accuracies x100 to 2 decimals before choosing C and averaging folds (SentEval).
        keep_empty_lines: keep the empty lines of .pos/.neg files as empty sentences (SentEval).
    """

    name: str
    pair_features: str
    inner_kfold_grid: tuple[float, ...]
    kfold_grid: tuple[float, ...]
    split_grid: tuple[float, ...]
    max_iter: int
    sort_by_length: bool
    round_scores: bool
    keep_empty_lines: bool

    def percent(self, fraction: float) -> float:
        return round(100 * fraction, 2) if self.round_scores else 100 * fraction


def powers_of_two(first: int, last: int) -> tuple[float, ...]:
    return tuple(2.0**t for t in range(first, last + 1))


PROTOCOLS = {
    "senteval": TransferProtocol(
        name="senteval",
        pair_features="difference_product",
        inner_kfold_grid=powers_of_two(-2, 3),  # validation.py InnerKFoldClassifier: range(-2, 4)
        kfold_grid=powers_of_two(-1, 5),  # KFoldClassifier: range(-1, 6)
        split_grid=powers_of_two(-2, 3),  # SplitClassifier: range(-2, 4)
        max_iter=100,  # LogisticRegression(C=reg, random_state=seed): scikit-learn's default
        sort_by_length=True,
        round_scores=True,
        keep_empty_lines=True,
    ),
    "extended": TransferProtocol(
        name="extended",
        pair_features="full",
        inner_kfold_grid=powers_of_two(-2, 3),
        kfold_grid=powers_of_two(-2, 3),
        split_grid=powers_of_two(-2, 3),
        max_iter=1000,
        sort_by_length=False,
        round_scores=False,
        keep_empty_lines=False,
    ),
}
# Kept for callers of the first version: the grid every classifier used before the protocols existed.
REGULARISATION_GRID = PROTOCOLS["extended"].inner_kfold_grid


def get_protocol(protocol: str | TransferProtocol) -> TransferProtocol:
    if isinstance(protocol, TransferProtocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown transfer protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


@dataclass
class TransferTask:
    """A loaded transfer task.

    ``splits`` maps ``"all"`` (cross-validated tasks) or ``"train"``/``"dev"``/``"test"`` to ``(inputs, labels)``;
    an input is a sentence, or a ``(sentence_a, sentence_b)`` pair when ``pair_task`` is true.
    ``empty_lines`` counts the empty lines of the source files (kept or dropped, per protocol).
    """

    name: str
    classifier: str  # "inner_kfold", "split" or "kfold"
    splits: dict[str, tuple[list[Any], list[Any]]]
    pair_task: bool = False
    sources: list[str] = field(default_factory=list)
    empty_lines: int = 0


# ----------------------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------------------


def normalise_whitespace(text: str) -> str:
    """Split on whitespace and join with one space: the sentence SentEval's batcher receives as tokens."""
    return " ".join(text.split())


def decoded_lines(path: Path) -> list[str]:
    """The lines of a transfer task file: UTF-8 with or without BOM, else latin-1 (as SentEval's files come)."""
    if not path.is_file():
        raise FileNotFoundError(f"transfer task file not found: {path}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        return raw.decode("latin-1").splitlines()


def read_text_lines(path: Path, keep_empty: bool = False) -> tuple[list[str], int]:
    """Lines of a file (UTF-8 with or without BOM, else latin-1), whitespace-normalised, and the number of empty
    lines (kept as ``""`` when ``keep_empty``, else dropped)."""
    lines = [normalise_whitespace(line) for line in decoded_lines(path)]
    empty = sum(1 for line in lines if not line)
    return (lines if keep_empty else [line for line in lines if line]), empty


def read_binary_files(name: str, positive: Path, negative: Path, keep_empty: bool) -> TransferTask:
    (pos, empty_pos), (neg, empty_neg) = (
        read_text_lines(positive, keep_empty),
        read_text_lines(negative, keep_empty),
    )
    return TransferTask(
        name,
        "inner_kfold",
        {"all": (pos + neg, [1] * len(pos) + [0] * len(neg))},
        sources=[str(positive), str(negative)],
        empty_lines=empty_pos + empty_neg,
    )


def read_sst_file(path: Path, fine: bool) -> tuple[list[str], list[int]]:
    """SST binary lines are ``sentence<TAB>label``; fine-grained lines are ``label sentence``."""
    sentences, labels = [], []
    lines, _ = read_text_lines_raw(path)
    for line_number, line in lines:
        if fine:
            label, _, sentence = line.partition(" ")
        else:
            sentence, _, label = line.rpartition("\t")
        try:
            labels.append(int(label))
        except ValueError:
            raise ValueError(f"{path}:{line_number}: label {label!r} is not an integer") from None
        sentences.append(normalise_whitespace(sentence))
    return sentences, labels


def read_text_lines_raw(path: Path) -> tuple[list[tuple[int, str]], int]:
    """``(line number, stripped line)`` of the non-empty lines (tabs kept), and the number of empty lines."""
    numbered = [(i, line.strip()) for i, line in enumerate(decoded_lines(path), start=1)]
    kept = [(i, line) for i, line in numbered if line]
    return kept, len(numbered) - len(kept)


def read_trec_file(path: Path) -> tuple[list[str], list[int]]:
    """TREC lines are ``COARSE:fine question``; the label is the coarse class as SentEval's id (6 classes)."""
    sentences, labels = [], []
    lines, _ = read_text_lines_raw(path)
    for line_number, line in lines:
        target, sep, rest = line.partition(":")
        if not sep or " " not in rest:
            raise ValueError(f"{path}:{line_number}: expected 'COARSE:fine question'")
        if target not in TREC_LABELS:
            raise ValueError(
                f"{path}:{line_number}: unknown TREC class {target!r} (expected {', '.join(TREC_LABELS)})"
            )
        labels.append(TREC_LABELS[target])
        sentences.append(normalise_whitespace(rest.split(" ", 1)[1]))
    return sentences, labels


def read_tsv_with_header(path: Path, columns: Sequence[str]) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of a tab-separated file with a header, restricted to ``columns`` (by header name,
    case-insensitive)."""
    lines, _ = read_text_lines_raw(path)
    if not lines:
        raise ValueError(f"{path}: empty file")
    header = [h.strip().lower() for h in lines[0][1].split("\t")]
    indices = []
    for column in columns:
        if column.lower() not in header:
            raise ValueError(f"{path}: header has no column {column!r} (has {lines[0][1]!r})")
        indices.append(header.index(column.lower()))
    rows = []
    for line_number, line in lines[1:]:
        fields = line.split("\t")
        if len(fields) <= max(indices):
            raise ValueError(
                f"{path}:{line_number}: expected {len(header)} tab-separated fields, got {len(fields)}"
            )
        rows.append((line_number, [fields[i] for i in indices]))
    return rows


def read_pair_file(
    path: Path, columns: Sequence[str], label_ids: Mapping[str, int] | None
) -> tuple[list[tuple[str, str]], list[int]]:
    """Sentence pairs and integer labels (``label_ids`` maps label names; else the label must be an integer)."""
    pairs, labels = [], []
    for line_number, (a, b, label) in read_tsv_with_header(path, columns):
        label = label.strip()
        try:
            labels.append(label_ids[label] if label_ids is not None else int(label))
        except (KeyError, ValueError):
            expected = ", ".join(label_ids) if label_ids is not None else "an integer"
            raise ValueError(f"{path}:{line_number}: label {label!r} is not {expected}") from None
        pairs.append((normalise_whitespace(a), normalise_whitespace(b)))
    return pairs, labels


def missing_files(downstream: str | Path, name: str) -> list[Path]:
    """The files of transfer task ``name`` that are not under ``downstream``."""
    if name not in REQUIRED_FILES:
        raise ValueError(f"unknown transfer task {name!r}; choose from {', '.join(TRANSFER_TASKS)}")
    root = Path(downstream)
    return [root / f for f in REQUIRED_FILES[name] if not (root / f).is_file()]


def available_transfer_tasks(downstream: str | Path) -> list[str]:
    """Transfer tasks whose files are all present under ``downstream`` (e.g. SICK-E needs its test file)."""
    return [name for name in TRANSFER_TASKS if not missing_files(downstream, name)]


def load_transfer_task(
    downstream: str | Path, name: str, protocol: str | TransferProtocol = "senteval"
) -> TransferTask:
    """Load one of :data:`TRANSFER_TASKS` from a SentEval ``downstream/`` folder, ordered as ``protocol`` says."""
    protocol = get_protocol(protocol)
    root = Path(downstream)
    missing = missing_files(root, name)
    if missing:
        raise FileNotFoundError(f"transfer task {name}: file not found: {', '.join(str(m) for m in missing)}")
    task = read_task(root, name, protocol)
    return sort_by_length(task) if protocol.sort_by_length else task


def read_task(root: Path, name: str, protocol: TransferProtocol) -> TransferTask:
    binary = {
        "MR": ("MR", "rt-polarity.pos", "rt-polarity.neg"),
        "CR": ("CR", "custrev.pos", "custrev.neg"),
        "SUBJ": ("SUBJ", "subj.objective", "subj.subjective"),
        "MPQA": ("MPQA", "mpqa.pos", "mpqa.neg"),
    }
    if name in binary:
        folder, pos, neg = binary[name]
        return read_binary_files(name, root / folder / pos, root / folder / neg, protocol.keep_empty_lines)
    if name in ("SST2", "SST5"):
        folder = root / "SST" / ("binary" if name == "SST2" else "fine")
        files = {s: folder / f"sentiment-{s}" for s in ("train", "dev", "test")}
        splits = {s: read_sst_file(path, fine=name == "SST5") for s, path in files.items()}
        return TransferTask(name, "split", splits, sources=[str(p) for p in files.values()])
    if name == "TREC":
        files = {"train": root / "TREC" / "train_5500.label", "test": root / "TREC" / "TREC_10.label"}
        splits = {s: read_trec_file(path) for s, path in files.items()}
        return TransferTask(name, "kfold", splits, sources=[str(p) for p in files.values()])
    if name == "MRPC":
        columns = ("#1 String", "#2 String", "Quality")
        files = {s: root / "MRPC" / f"msr_paraphrase_{s}.txt" for s in ("train", "test")}
        splits = {s: read_pair_file(path, columns, None) for s, path in files.items()}
        return TransferTask(name, "kfold", splits, pair_task=True, sources=[str(p) for p in files.values()])
    if name == "SICK-E":
        columns = ("sentence_A", "sentence_B", "entailment_judgment")
        names = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
        files = {s: root / "SICK" / f for s, f in names.items()}
        splits = {s: read_pair_file(path, columns, SICK_LABELS) for s, path in files.items()}
        return TransferTask(name, "split", splits, pair_task=True, sources=[str(p) for p in files.values()])
    raise ValueError(f"unknown transfer task {name!r}; choose from {', '.join(TRANSFER_TASKS)}")


def length_key(item: Any, label: Any, pair_task: bool) -> tuple:
    """SentEval's sort key: (token count, label), or (tokens of a, tokens of b, label) for a pair."""
    if pair_task:
        return (len(item[0].split()), len(item[1].split()), label)
    return (len(item.split()), label)


def sort_by_length(task: TransferTask) -> TransferTask:
    """Each split stably sorted by :func:`length_key`, as SentEval's ``run`` does before encoding and folding."""
    splits = {}
    for split, (inputs, labels) in task.splits.items():
        order = sorted(range(len(labels)), key=lambda i: length_key(inputs[i], labels[i], task.pair_task))
        splits[split] = ([inputs[i] for i in order], [labels[i] for i in order])
    return replace(task, splits=splits)


# ----------------------------------------------------------------------------------------------------------------------
# Classifiers
# ----------------------------------------------------------------------------------------------------------------------


class FitRunner:
    """Fits ``LogisticRegression`` models, counting them (and those stopped at ``max_iter``) under a progress bar."""

    def __init__(
        self, protocol: TransferProtocol, seed: int, total: int, desc: str, show_progress_bar: bool
    ) -> None:
        self.protocol = protocol
        self.seed = seed
        self.fits = 0
        self.unconverged = 0
        self.bar = tqdm(total=total, desc=desc, unit="fit", disable=not show_progress_bar, leave=False)

    def fit(self, X: np.ndarray, y: np.ndarray, c: float):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        classifier = LogisticRegression(C=c, max_iter=self.protocol.max_iter, random_state=self.seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            classifier.fit(X, y)
        self.unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        self.fits += 1
        self.bar.update(1)
        return classifier

    def score(self, X_train, y_train, X_test, y_test, c: float) -> float:
        return float(self.fit(X_train, y_train, c).score(X_test, y_test))

    def counts(self) -> dict[str, int]:
        self.bar.close()
        return {"fits": self.fits, "unconverged_fits": self.unconverged}


def stratified_folds(
    X: np.ndarray, y: np.ndarray, kfold: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """SentEval's folds: ``StratifiedKFold(n_splits=kfold, shuffle=True, random_state=seed)`` on the data as ordered."""
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_splits=kfold, shuffle=True, random_state=seed).split(X, y))


def choose_c_by_cv(
    X: np.ndarray, y: np.ndarray, kfold: int, grid: Sequence[float], runner: FitRunner
) -> tuple[float, float]:
    """C with the best mean accuracy x100 over ``kfold`` stratified folds (first best on ties); returns (C, acc)."""
    folds = stratified_folds(X, y, kfold, runner.seed)
    scores = [
        runner.protocol.percent(np.mean([runner.score(X[tr], y[tr], X[te], y[te], c) for tr, te in folds]))
        for c in grid
    ]
    best = int(np.argmax(scores))
    return grid[best], float(scores[best])


def cross_validated_accuracy(
    X: np.ndarray,
    y: np.ndarray,
    kfold: int = 10,
    seed: int = DEFAULT_SEED,
    protocol: str | TransferProtocol = "senteval",
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """SentEval's ``InnerKFoldClassifier``: outer k-fold test accuracy, C chosen by inner k-fold CV on each outer
    train split. Accuracies x100."""
    protocol = get_protocol(protocol)
    X, y = np.asarray(X), np.asarray(y)
    grid = protocol.inner_kfold_grid
    runner = FitRunner(protocol, seed, kfold * (len(grid) * kfold + 1), "inner k-fold CV", show_progress_bar)
    test_scores, dev_scores, chosen = [], [], []
    for train_idx, test_idx in stratified_folds(X, y, kfold, seed):
        c, dev = choose_c_by_cv(X[train_idx], y[train_idx], kfold, grid, runner)
        accuracy = runner.score(X[train_idx], y[train_idx], X[test_idx], y[test_idx], c)
        test_scores.append(protocol.percent(accuracy))
        dev_scores.append(dev)
        chosen.append(c)
    return {
        "accuracy": mean_score(test_scores, protocol),
        "dev_accuracy": mean_score(dev_scores, protocol),
        "C": chosen,
        "n": len(y),
        **runner.counts(),
    }


def mean_score(scores: Sequence[float], protocol: TransferProtocol) -> float:
    mean = float(np.mean(scores))
    return round(mean, 2) if protocol.round_scores else mean


def dev_selected_accuracy(
    train: tuple[np.ndarray, np.ndarray],
    dev: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    seed: int = DEFAULT_SEED,
    protocol: str | TransferProtocol = "senteval",
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """SentEval's ``SplitClassifier``: fit on train for each C, keep the best on dev, report its test accuracy."""
    protocol = get_protocol(protocol)
    grid = protocol.split_grid
    runner = FitRunner(protocol, seed, len(grid) + 1, "C on dev", show_progress_bar)
    dev_scores = [protocol.percent(runner.score(*train, *dev, c)) for c in grid]
    best = int(np.argmax(dev_scores))
    classifier = runner.fit(*train, grid[best])
    return test_metrics(classifier, test, protocol) | {
        "dev_accuracy": dev_scores[best],
        "C": grid[best],
        "n_train": len(train[1]),
        "n_test": len(test[1]),
        **runner.counts(),
    }


def cv_selected_accuracy(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    kfold: int = 10,
    seed: int = DEFAULT_SEED,
    protocol: str | TransferProtocol = "senteval",
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """SentEval's ``KFoldClassifier`` (TREC, MRPC): C by k-fold CV on train, fit on all of train, test once."""
    protocol = get_protocol(protocol)
    grid = protocol.kfold_grid
    runner = FitRunner(protocol, seed, len(grid) * kfold + 1, "k-fold CV", show_progress_bar)
    c, dev = choose_c_by_cv(*train, kfold, grid, runner)
    classifier = runner.fit(*train, c)
    return test_metrics(classifier, test, protocol) | {
        "dev_accuracy": dev,
        "C": c,
        "n_train": len(train[1]),
        "n_test": len(test[1]),
        **runner.counts(),
    }


def test_metrics(
    classifier, test: tuple[np.ndarray, np.ndarray], protocol: TransferProtocol
) -> dict[str, float]:
    """Accuracy x100, plus F1 x100 of the positive class for binary tasks (as SentEval reports for MRPC)."""
    from sklearn.metrics import f1_score

    X_test, y_test = test
    predicted = classifier.predict(X_test)
    metrics = {"accuracy": protocol.percent(float(np.mean(predicted == y_test)))}
    if len(classifier.classes_) == 2:
        metrics["f1"] = protocol.percent(float(f1_score(y_test, predicted, pos_label=classifier.classes_[1])))
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Running a task with a model
# ----------------------------------------------------------------------------------------------------------------------


def pair_features(u: np.ndarray, v: np.ndarray, kind: str = "full") -> np.ndarray:
    """Pair features: ``"difference_product"`` = ``[|u - v|, u * v]`` (SentEval's MRPC / SICK-E), ``"full"`` =
    InferSent's ``[u, v, |u - v|, u * v]``."""
    if kind == "difference_product":
        return np.concatenate([np.abs(u - v), u * v], axis=1)
    if kind == "full":
        return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)
    raise ValueError(f"unknown pair features {kind!r}; use 'difference_product' or 'full'")


def task_sentences(task: TransferTask) -> list[str]:
    sentences = []
    for inputs, _ in task.splits.values():
        for item in inputs:
            sentences.extend(item if task.pair_task else (item,))
    return list(dict.fromkeys(sentences))


def featurize(
    task: TransferTask,
    embed: Callable[[Sequence[str]], Mapping[str, np.ndarray]],
    protocol: str | TransferProtocol = "senteval",
) -> dict[str, tuple]:
    """Encode every distinct sentence of the task once, then build ``(X, y)`` per split."""
    protocol = get_protocol(protocol)
    lookup = embed(task_sentences(task))
    features = {}
    for split, (inputs, labels) in task.splits.items():
        if task.pair_task:
            u = np.stack([lookup[a] for a, _ in inputs])
            v = np.stack([lookup[b] for _, b in inputs])
            X = pair_features(u, v, protocol.pair_features)
        else:
            X = np.stack([lookup[s] for s in inputs])
        features[split] = (X, np.asarray(labels))
    return features


def run_classifier(
    task: TransferTask,
    features: Mapping[str, tuple],
    kfold: int,
    seed: int,
    protocol: str | TransferProtocol = "senteval",
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    options = {"seed": seed, "protocol": protocol, "show_progress_bar": show_progress_bar}
    if task.classifier == "inner_kfold":
        return cross_validated_accuracy(*features["all"], kfold=kfold, **options)
    if task.classifier == "split":
        return dev_selected_accuracy(features["train"], features["dev"], features["test"], **options)
    if task.classifier == "kfold":
        return cv_selected_accuracy(features["train"], features["test"], kfold=kfold, **options)
    raise ValueError(f"unknown classifier {task.classifier!r}")


def evaluate_task(
    task: TransferTask,
    embed: Callable[[Sequence[str]], Mapping[str, np.ndarray]],
    kfold: int = 10,
    seed: int = DEFAULT_SEED,
    protocol: str | TransferProtocol = "senteval",
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """Features + classifier for one loaded task; the result names its files and records its timings."""
    protocol = get_protocol(protocol)
    wall, cpu = time.perf_counter(), time.process_time()
    features = featurize(task, embed, protocol)
    encode_seconds = time.perf_counter() - wall
    result = run_classifier(task, features, kfold, seed, protocol, show_progress_bar)
    return result | {
        "classifier": task.classifier,
        "sources": task.sources,
        "empty_lines": task.empty_lines,
        "empty_lines_kept": protocol.keep_empty_lines,
        "encode_seconds": encode_seconds,
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
    }


def load_transfer_tasks(
    downstream: str | Path,
    tasks: Sequence[str] | None = None,
    protocol: str | TransferProtocol = "senteval",
) -> tuple[dict[str, TransferTask], dict[str, str]]:
    """Read the named ``tasks`` (a missing file is an error naming it) or every task present (absent ones are
    returned as ``skipped``: name -> reason naming the missing files). Nothing is encoded here."""
    downstream = Path(downstream)
    if not downstream.is_dir():
        raise FileNotFoundError(f"SentEval folder not found: {downstream}")
    for name in tasks or ():
        if name not in TRANSFER_TASKS:
            raise ValueError(f"unknown transfer task {name!r}; choose from {', '.join(TRANSFER_TASKS)}")
    if tasks and len(set(tasks)) != len(tasks):
        raise ValueError(f"transfer task named twice in {list(tasks)}")
    names = list(tasks) if tasks else list(TRANSFER_TASKS)
    loaded, skipped = {}, {}
    for name in names:
        missing = missing_files(downstream, name)
        if missing and not tasks:
            skipped[name] = "missing " + ", ".join(str(m) for m in missing)
            continue
        loaded[name] = load_transfer_task(downstream, name, protocol)
    if not loaded:
        raise FileNotFoundError(f"no transfer task found under {downstream} (expected e.g. MR/, CR/, SST/)")
    if skipped:
        logger.warning("transfer tasks skipped: " + "; ".join(f"{n} ({r})" for n, r in skipped.items()))
    return loaded, skipped


def model_embedder(model, batch_size: int, show_progress_bar: bool) -> Callable[[Sequence[str]], dict]:
    def embed(sentences: Sequence[str]) -> dict[str, np.ndarray]:
        vectors = model.encode(
            list(sentences), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=show_progress_bar
        )
        return dict(zip(sentences, vectors, strict=True))

    return embed


def evaluate_transfer_tasks(
    model,
    loaded: Mapping[str, TransferTask],
    skipped: Mapping[str, str] | None = None,
    kfold: int = 10,
    seed: int = DEFAULT_SEED,
    batch_size: int = 64,
    protocol: str | TransferProtocol = "senteval",
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """Evaluate already loaded tasks (see :func:`load_transfer_tasks`) with a SentenceTransformer."""
    protocol = get_protocol(protocol)
    embed = model_embedder(model, batch_size, show_progress_bar)
    start = time.perf_counter()
    results = {}
    for name, task in loaded.items():
        logger.info(f"transfer: {name}")
        results[name] = evaluate_task(task, embed, kfold, seed, protocol, show_progress_bar)
    return {
        "tasks": results,
        "skipped": dict(skipped or {}),
        "kfold": kfold,
        "seed": seed,
        "protocol": protocol.name,
        "seconds": time.perf_counter() - start,
    }


def evaluate_transfer(
    model,
    downstream: str | Path,
    tasks: Sequence[str] | None = None,
    kfold: int = 10,
    seed: int = DEFAULT_SEED,
    batch_size: int = 64,
    show_progress_bar: bool = False,
    protocol: str | TransferProtocol = "senteval",
) -> dict[str, Any]:
    """Run the transfer tasks present under ``downstream`` (or the named ``tasks``) with a SentenceTransformer."""
    loaded, skipped = load_transfer_tasks(downstream, tasks, protocol)
    return evaluate_transfer_tasks(
        model, loaded, skipped, kfold, seed, batch_size, protocol, show_progress_bar
    )
