"""SentEval transfer tasks: frozen sentence embeddings + logistic regression, following SentEval's protocol.

=========  ==========================================  ============================================================
task       data (SentEval ``downstream/`` layout)      protocol
=========  ==========================================  ============================================================
MR         ``MR/rt-polarity.{pos,neg}``                10-fold CV; C chosen by inner 10-fold CV on each outer train
CR         ``CR/custrev.{pos,neg}``                    same
SUBJ       ``SUBJ/subj.{objective,subjective}``        same
MPQA       ``MPQA/mpqa.{pos,neg}``                     same
SST2       ``SST/binary/sentiment-{train,dev,test}``   C chosen on dev (fit on train), test accuracy
SST5       ``SST/fine/sentiment-{train,dev,test}``     same
TREC       ``TREC/{train_5500,TREC_10}.label``         C chosen by k-fold CV on train (no dev split), test accuracy
MRPC       ``MRPC/msr_paraphrase_{train,test}.txt``    as TREC on [u, v, |u-v|, u*v]; accuracy and F1
SICK-E     ``SICK/SICK_{train,trial,test_annotated}``  as SST on [u, v, |u-v|, u*v]; only when all three are present
=========  ==========================================  ============================================================

The classifier is scikit-learn's ``LogisticRegression`` with C in SentEval's grid ``2**-2 .. 2**3`` (SentEval's
non-PyTorch setting). Folds are stratified and shuffled with ``seed``; the sentences of a task are encoded once.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

REGULARISATION_GRID = tuple(2.0**t for t in range(-2, 4))  # SentEval: [2**t for t in range(-2, 4, 1)]
DEFAULT_SEED = 1111  # SentEval's default seed
TRANSFER_TASKS = ("MR", "CR", "SUBJ", "MPQA", "SST2", "SST5", "TREC", "MRPC", "SICK-E")


@dataclass
class TransferTask:
    """A loaded transfer task.

    ``splits`` maps ``"all"`` (cross-validated tasks) or ``"train"``/``"dev"``/``"test"`` to ``(inputs, labels)``;
    an input is a sentence, or a ``(sentence_a, sentence_b)`` pair when ``pair_task`` is true.
    """

    name: str
    protocol: str  # "cv", "dev", or "cv_then_test"
    splits: dict[str, tuple[list[Any], list[Any]]]
    pair_task: bool = False
    metrics: tuple[str, ...] = ("accuracy",)
    sources: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------------------


def read_text_lines(path: Path) -> list[str]:
    """Non-empty lines of a file, UTF-8 (with or without BOM) else latin-1, as SentEval reads these files."""
    if not path.is_file():
        raise FileNotFoundError(f"transfer task file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_binary_files(name: str, positive: Path, negative: Path) -> TransferTask:
    pos, neg = read_text_lines(positive), read_text_lines(negative)
    return TransferTask(
        name, "cv", {"all": (pos + neg, [1] * len(pos) + [0] * len(neg))}, sources=[str(positive)]
    )


def read_sst_file(path: Path, fine: bool) -> tuple[list[str], list[int]]:
    """SST binary lines are ``sentence<TAB>label``; fine-grained lines are ``label sentence``."""
    sentences, labels = [], []
    for line_number, line in enumerate(read_text_lines(path), start=1):
        if fine:
            label, _, sentence = line.partition(" ")
        else:
            sentence, _, label = line.rpartition("\t")
        try:
            labels.append(int(label))
        except ValueError:
            raise ValueError(f"{path}:{line_number}: label {label!r} is not an integer") from None
        sentences.append(sentence.strip())
    return sentences, labels


def read_trec_file(path: Path) -> tuple[list[str], list[str]]:
    """TREC lines are ``COARSE:fine question``; the label is the coarse class (6 classes)."""
    sentences, labels = [], []
    for line_number, line in enumerate(read_text_lines(path), start=1):
        target, sep, rest = line.partition(":")
        if not sep or " " not in rest:
            raise ValueError(f"{path}:{line_number}: expected 'COARSE:fine question'")
        labels.append(target)
        sentences.append(rest.split(" ", 1)[1])
    return sentences, labels


def read_tsv_with_header(path: Path, columns: Sequence[str]) -> list[list[str]]:
    """Rows of a tab-separated file with a header, restricted to ``columns`` (by header name, case-insensitive)."""
    lines = read_text_lines(path)
    header = [h.strip().lower() for h in lines[0].split("\t")]
    indices = []
    for column in columns:
        if column.lower() not in header:
            raise ValueError(f"{path}: header has no column {column!r} (has {lines[0]!r})")
        indices.append(header.index(column.lower()))
    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) <= max(indices):
            raise ValueError(
                f"{path}:{line_number}: expected {len(header)} tab-separated fields, got {len(fields)}"
            )
        rows.append([fields[i] for i in indices])
    return rows


def read_pair_file(path: Path, columns: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    rows = read_tsv_with_header(path, columns)
    return [(a, b) for a, b, _ in rows], [label for _, _, label in rows]


def load_transfer_task(downstream: str | Path, name: str) -> TransferTask:
    """Load one of :data:`TRANSFER_TASKS` from a SentEval ``downstream/`` folder."""
    root = Path(downstream)
    binary = {
        "MR": ("MR", "rt-polarity.pos", "rt-polarity.neg"),
        "CR": ("CR", "custrev.pos", "custrev.neg"),
        "SUBJ": ("SUBJ", "subj.objective", "subj.subjective"),
        "MPQA": ("MPQA", "mpqa.pos", "mpqa.neg"),
    }
    if name in binary:
        folder, pos, neg = binary[name]
        return read_binary_files(name, root / folder / pos, root / folder / neg)
    if name in ("SST2", "SST5"):
        folder = root / "SST" / ("binary" if name == "SST2" else "fine")
        splits = {
            s: read_sst_file(folder / f"sentiment-{s}", fine=name == "SST5") for s in ("train", "dev", "test")
        }
        return TransferTask(name, "dev", splits, sources=[str(folder)])
    if name == "TREC":
        splits = {"train": read_trec_file(root / "TREC" / "train_5500.label")}
        splits["test"] = read_trec_file(root / "TREC" / "TREC_10.label")
        return TransferTask(name, "cv_then_test", splits, sources=[str(root / "TREC")])
    if name == "MRPC":
        columns = ("#1 String", "#2 String", "Quality")
        splits = {
            s: read_pair_file(root / "MRPC" / f"msr_paraphrase_{s}.txt", columns) for s in ("train", "test")
        }
        return TransferTask(name, "cv_then_test", splits, pair_task=True, metrics=("accuracy", "f1"))
    if name == "SICK-E":
        columns = ("sentence_A", "sentence_B", "entailment_judgment")
        files = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
        splits = {s: read_pair_file(root / "SICK" / f, columns) for s, f in files.items()}
        return TransferTask(name, "dev", splits, pair_task=True)
    raise ValueError(f"unknown transfer task {name!r}; choose from {', '.join(TRANSFER_TASKS)}")


def available_transfer_tasks(downstream: str | Path) -> list[str]:
    """Transfer tasks whose files are all present under ``downstream`` (e.g. SICK-E needs its test file)."""
    root = Path(downstream)
    required = {
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
    return [name for name, files in required.items() if all((root / f).is_file() for f in files)]


# ----------------------------------------------------------------------------------------------------------------------
# Classifier protocol
# ----------------------------------------------------------------------------------------------------------------------


def make_classifier(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=1000, random_state=seed)


def fit_and_score(X_train, y_train, X_test, y_test, c: float, seed: int) -> float:
    with warnings.catch_warnings():
        # ConvergenceWarning on hard folds; the accuracy is still what is measured
        warnings.simplefilter("ignore")
        return float(make_classifier(c, seed).fit(X_train, y_train).score(X_test, y_test))


def choose_c_by_cv(
    X: np.ndarray, y: np.ndarray, kfold: int, seed: int, grid: Sequence[float] = REGULARISATION_GRID
) -> tuple[float, float]:
    """SentEval's inner loop: the C with the best mean accuracy over ``kfold`` stratified folds; returns (C, acc)."""
    from sklearn.model_selection import StratifiedKFold

    folds = list(StratifiedKFold(n_splits=kfold, shuffle=True, random_state=seed).split(X, y))
    scores = [np.mean([fit_and_score(X[tr], y[tr], X[te], y[te], c, seed) for tr, te in folds]) for c in grid]
    best = int(np.argmax(scores))
    return grid[best], float(scores[best])


def cross_validated_accuracy(
    X: np.ndarray,
    y: np.ndarray,
    kfold: int = 10,
    seed: int = DEFAULT_SEED,
    grid: Sequence[float] = REGULARISATION_GRID,
) -> dict[str, Any]:
    """SentEval's ``InnerKFoldClassifier``: outer k-fold test accuracy, C chosen by inner k-fold CV on each outer
    train split. Accuracies x100."""
    from sklearn.model_selection import StratifiedKFold

    X, y = np.asarray(X), np.asarray(y)
    test_scores, dev_scores, chosen = [], [], []
    for train_idx, test_idx in StratifiedKFold(n_splits=kfold, shuffle=True, random_state=seed).split(X, y):
        c, dev = choose_c_by_cv(X[train_idx], y[train_idx], kfold, seed, grid)
        test_scores.append(fit_and_score(X[train_idx], y[train_idx], X[test_idx], y[test_idx], c, seed))
        dev_scores.append(dev)
        chosen.append(c)
    return {
        "accuracy": 100 * float(np.mean(test_scores)),
        "dev_accuracy": 100 * float(np.mean(dev_scores)),
        "C": chosen,
        "n": len(y),
    }


def dev_selected_accuracy(
    train: tuple[np.ndarray, np.ndarray],
    dev: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    seed: int = DEFAULT_SEED,
    grid: Sequence[float] = REGULARISATION_GRID,
) -> dict[str, Any]:
    """SentEval's ``SplitClassifier``: fit on train for each C, keep the best on dev, report its test accuracy."""
    dev_scores = [fit_and_score(*train, *dev, c, seed) for c in grid]
    best = int(np.argmax(dev_scores))
    classifier = make_classifier(grid[best], seed).fit(*train)
    return test_metrics(classifier, test) | {
        "dev_accuracy": 100 * dev_scores[best],
        "C": grid[best],
        "n_train": len(train[1]),
        "n_test": len(test[1]),
    }


def cv_selected_accuracy(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    kfold: int = 10,
    seed: int = DEFAULT_SEED,
    grid: Sequence[float] = REGULARISATION_GRID,
) -> dict[str, Any]:
    """SentEval's ``KFoldClassifier`` (TREC, MRPC): C by k-fold CV on train, fit on all of train, test once."""
    c, dev = choose_c_by_cv(*train, kfold, seed, grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = make_classifier(c, seed).fit(*train)
    return test_metrics(classifier, test) | {
        "dev_accuracy": 100 * dev,
        "C": c,
        "n_train": len(train[1]),
        "n_test": len(test[1]),
    }


def test_metrics(classifier, test: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Accuracy x100, plus F1 x100 of the positive class for binary tasks (as SentEval reports for MRPC)."""
    from sklearn.metrics import f1_score

    X_test, y_test = test
    predicted = classifier.predict(X_test)
    metrics = {"accuracy": 100 * float(np.mean(predicted == y_test))}
    if len(classifier.classes_) == 2:
        metrics["f1"] = 100 * float(f1_score(y_test, predicted, pos_label=classifier.classes_[1]))
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Running a task with a model
# ----------------------------------------------------------------------------------------------------------------------


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """InferSent-style pair features ``[u, v, |u - v|, u * v]``."""
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def task_sentences(task: TransferTask) -> list[str]:
    sentences = []
    for inputs, _ in task.splits.values():
        for item in inputs:
            sentences.extend(item if task.pair_task else (item,))
    return list(dict.fromkeys(sentences))


def featurize(
    task: TransferTask, embed: Callable[[Sequence[str]], Mapping[str, np.ndarray]]
) -> dict[str, tuple]:
    """Encode every distinct sentence of the task once, then build ``(X, y)`` per split."""
    lookup = embed(task_sentences(task))
    features = {}
    for split, (inputs, labels) in task.splits.items():
        if task.pair_task:
            u = np.stack([lookup[a] for a, _ in inputs])
            v = np.stack([lookup[b] for _, b in inputs])
            X = pair_features(u, v)
        else:
            X = np.stack([lookup[s] for s in inputs])
        features[split] = (X, np.asarray(labels))
    return features


def run_protocol(task: TransferTask, features: Mapping[str, tuple], kfold: int, seed: int) -> dict[str, Any]:
    if task.protocol == "cv":
        return cross_validated_accuracy(*features["all"], kfold=kfold, seed=seed)
    if task.protocol == "dev":
        return dev_selected_accuracy(features["train"], features["dev"], features["test"], seed=seed)
    if task.protocol == "cv_then_test":
        return cv_selected_accuracy(features["train"], features["test"], kfold=kfold, seed=seed)
    raise ValueError(f"unknown protocol {task.protocol!r}")


def evaluate_transfer(
    model,
    downstream: str | Path,
    tasks: Sequence[str] | None = None,
    kfold: int = 10,
    seed: int = DEFAULT_SEED,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """Run the transfer tasks present under ``downstream`` (or the named ``tasks``) with a SentenceTransformer."""
    present = available_transfer_tasks(downstream)
    names = list(tasks) if tasks else present
    results: dict[str, Any] = {}
    skipped = {}
    for name in names:
        if name not in TRANSFER_TASKS:
            raise ValueError(f"unknown transfer task {name!r}; choose from {', '.join(TRANSFER_TASKS)}")
        if name not in present:
            skipped[name] = "files missing"
            logger.warning(f"transfer task {name} skipped: its files are not all present under {downstream}")
            continue
        task = load_transfer_task(downstream, name)

        def embed(sentences: Sequence[str]) -> dict[str, np.ndarray]:
            vectors = model.encode(
                list(sentences),
                batch_size=batch_size,
                convert_to_numpy=True,
                show_progress_bar=show_progress_bar,
            )
            return dict(zip(sentences, vectors, strict=True))

        logger.info(f"transfer: {name}")
        results[name] = run_protocol(task, featurize(task, embed), kfold=kfold, seed=seed)
        results[name]["protocol"] = task.protocol
    return {"tasks": results, "skipped": skipped, "kfold": kfold, "seed": seed}
