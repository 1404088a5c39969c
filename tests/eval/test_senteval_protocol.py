"""The ``senteval`` transfer protocol against SentEval's documented construction, written out here by hand.

The references below follow SentEval's ``senteval/tools/validation.py`` and its task files (``binary.py``,
``trec.py``, ``mrpc.py``, ``sst.py``, ``sick.py``) step by step; SentEval itself is not imported.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from retromae_st.eval.senteval import (
    PROTOCOLS,
    cross_validated_accuracy,
    cv_selected_accuracy,
    dev_selected_accuracy,
    featurize,
    load_transfer_task,
    pair_features,
)

SEED = 1111


def fit(X, y, c):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=c, random_state=SEED).fit(X, y)  # SentEval: scikit-learn's defaults


def reference_inner_kfold(X, y, k):
    """validation.py InnerKFoldClassifier, usepytorch=False."""
    regs = [2**t for t in range(-2, 4, 1)]
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=1111)
    dev, test, chosen = [], [], []
    for train_idx, test_idx in skf.split(X, y):
        X_train, y_train = X[train_idx], y[train_idx]
        scores = []
        for reg in regs:
            inner = StratifiedKFold(n_splits=k, shuffle=True, random_state=1111)
            regscores = [
                fit(X_train[a], y_train[a], reg).score(X_train[b], y_train[b])
                for a, b in inner.split(X_train, y_train)
            ]
            scores.append(round(100 * np.mean(regscores), 2))
        optreg = regs[np.argmax(scores)]
        dev.append(np.max(scores))
        chosen.append(optreg)
        test.append(round(100 * fit(X_train, y_train, optreg).score(X[test_idx], y[test_idx]), 2))
    return round(np.mean(dev), 2), round(np.mean(test), 2), chosen


def reference_kfold(train, test, k):
    """validation.py KFoldClassifier (TREC, MRPC)."""
    regs = [2**t for t in range(-1, 6, 1)]
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=SEED)
    scores = []
    for reg in regs:
        scan = [
            fit(train[0][a], train[1][a], reg).score(train[0][b], train[1][b]) for a, b in skf.split(*train)
        ]
        scores.append(round(100 * np.mean(scan), 2))
    optreg = regs[np.argmax(scores)]
    return np.max(scores), round(100 * fit(*train, optreg).score(*test), 2), optreg


def reference_split(train, dev, test):
    """validation.py SplitClassifier (SST, SICK-E)."""
    regs = [2**t for t in range(-2, 4, 1)]
    scores = [round(100 * fit(*train, reg).score(*dev), 2) for reg in regs]
    optreg = regs[np.argmax(scores)]
    return np.max(scores), round(100 * fit(*train, optreg).score(*test), 2), optreg


def noisy(n, dim=6, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.standard_normal((n, dim)) + 0.6 * y[:, None] * rng.standard_normal(dim)
    return X, y


def test_grids_and_solver_settings_are_senteval_s():
    protocol = PROTOCOLS["senteval"]
    assert protocol.inner_kfold_grid == tuple(2**t for t in range(-2, 4))
    assert protocol.kfold_grid == tuple(2**t for t in range(-1, 6))
    assert protocol.split_grid == tuple(2**t for t in range(-2, 4))
    assert protocol.max_iter == LogisticRegression().max_iter == 100
    assert protocol.pair_features == "difference_product"


def test_inner_kfold_equals_senteval_construction():
    X, y = noisy(60)
    dev, test, chosen = reference_inner_kfold(X, y, k=3)
    ours = cross_validated_accuracy(X, y, kfold=3, seed=SEED)
    assert (ours["dev_accuracy"], ours["accuracy"], ours["C"]) == (dev, test, chosen)
    assert ours["fits"] == 3 * (6 * 3 + 1)


def test_kfold_equals_senteval_construction():
    train, test = noisy(90, seed=1, classes=3), noisy(60, seed=2, classes=3)
    dev, accuracy, c = reference_kfold(train, test, k=3)
    ours = cv_selected_accuracy(train, test, kfold=3, seed=SEED)
    assert (ours["dev_accuracy"], ours["accuracy"], ours["C"]) == (dev, accuracy, c)
    assert ours["fits"] == 7 * 3 + 1


def test_split_equals_senteval_construction():
    train, dev_set, test = noisy(100, seed=3), noisy(40, seed=4), noisy(60, seed=5)
    dev, accuracy, c = reference_split(train, dev_set, test)
    ours = dev_selected_accuracy(train, dev_set, test, seed=SEED)
    assert (ours["dev_accuracy"], ours["accuracy"], ours["C"]) == (dev, accuracy, c)


def test_unconverged_fits_are_counted_not_hidden():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 20))
    X[:, 0] *= 1000  # one badly scaled feature: lbfgs stops at max_iter=100
    y = (X[:, 1] + 0.5 * rng.standard_normal(200) > 0).astype(int)
    result = dev_selected_accuracy(
        (X[:100], y[:100]), (X[100:150], y[100:150]), (X[150:], y[150:]), seed=SEED
    )
    assert result["unconverged_fits"] == result["fits"] == 7


def write_binary_task(root: Path) -> Path:
    """CR-like files with lines of different lengths, a repeated length and an empty line, as SentEval's data has."""
    (root / "CR").mkdir(parents=True)
    (root / "CR" / "custrev.pos").write_text("a b c\nshort\n\ngood  one here now\nx y\n")
    (root / "CR" / "custrev.neg").write_text("bad\nvery bad one\n\t\nworst of all\n")
    return root


def test_binary_task_order_is_senteval_s(tmp_path):
    root = write_binary_task(tmp_path / "downstream")
    task = load_transfer_task(root, "CR")
    # binary.py: loadFile = [line.split() for line in f.read().splitlines()], pos + neg, then
    # sorted(zip(samples, labels), key=lambda z: (len(z[0]), z[1]))
    pos = [line.split() for line in (root / "CR" / "custrev.pos").read_text().splitlines()]
    neg = [line.split() for line in (root / "CR" / "custrev.neg").read_text().splitlines()]
    ordered = sorted(
        zip(pos + neg, [1] * len(pos) + [0] * len(neg), strict=True), key=lambda z: (len(z[0]), z[1])
    )
    assert task.splits["all"] == ([" ".join(x) for x, _ in ordered], [label for _, label in ordered])
    assert task.empty_lines == 2
    extended = load_transfer_task(root, "CR", protocol="extended")
    assert "" not in extended.splits["all"][0] and extended.splits["all"][0][0] == "a b c"


def test_cv_folds_follow_the_sorted_order(tmp_path, hash_model):
    """Same seed, same folds as SentEval: features in SentEval's order give SentEval's result; file order does not
    have to (the test only requires that the order is SentEval's, which the reference consumes)."""
    root = tmp_path / "downstream"
    (root / "MR").mkdir(parents=True)
    rng = np.random.default_rng(0)
    words = ["w" + str(i) for i in range(30)]
    pos = [" ".join(rng.choice(words, rng.integers(1, 8))) + " good" for _ in range(40)]
    neg = [" ".join(rng.choice(words, rng.integers(1, 8))) for _ in range(40)]
    (root / "MR" / "rt-polarity.pos").write_text("\n".join(pos) + "\n")
    (root / "MR" / "rt-polarity.neg").write_text("\n".join(neg) + "\n")
    task = load_transfer_task(root, "MR")
    X, y = featurize(task, lambda s: {t: hash_model.vector(t) for t in s})["all"]
    samples = [s.split() for s in pos + neg]
    ordered = sorted(zip(samples, [1] * 40 + [0] * 40, strict=True), key=lambda z: (len(z[0]), z[1]))
    X_ref = np.stack([hash_model.vector(" ".join(s)) for s, _ in ordered])
    y_ref = np.array([label for _, label in ordered])
    np.testing.assert_array_equal(X, X_ref)
    dev, test, chosen = reference_inner_kfold(X_ref, y_ref, k=3)
    ours = cross_validated_accuracy(X, y, kfold=3, seed=SEED)
    assert (ours["dev_accuracy"], ours["accuracy"], ours["C"]) == (dev, test, chosen)


def write_pair_tasks(root: Path) -> Path:
    (root / "MRPC").mkdir(parents=True)
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    rows = ["1\t1\t2\tthe cat sat\ta cat", "0\t3\t4\tno\tnot at all here", "1\t5\t6\tthe cat sat\tthe dog"]
    for split in ("train", "test"):
        (root / "MRPC" / f"msr_paraphrase_{split}.txt").write_text("\n".join([header, *rows]) + "\n")
    (root / "SICK").mkdir()
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"
    rows = [
        "1\tthe cat\ta cat sits\t4.5\tENTAILMENT",
        "2\tthe cat\ta dog\t2.0\tCONTRADICTION",
        "3\tx\ty\t3\tNEUTRAL",
    ]
    for name in ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"):
        (root / "SICK" / name).write_text("\n".join([header, *rows]) + "\n")
    return root


def test_pair_order_labels_and_features_are_senteval_s(tmp_path, hash_model):
    root = write_pair_tasks(tmp_path / "downstream")
    mrpc = load_transfer_task(root, "MRPC")
    # mrpc.py: sorted(zip(X_A, X_B, y), key=lambda z: (len(z[0]), len(z[1]), z[2]))
    assert mrpc.splits["train"] == (
        [("no", "not at all here"), ("the cat sat", "a cat"), ("the cat sat", "the dog")],
        [0, 1, 1],
    )
    sick = load_transfer_task(root, "SICK-E")
    # sick.py label2id = {'CONTRADICTION': 0, 'NEUTRAL': 1, 'ENTAILMENT': 2}; the sort breaks ties by that id
    assert sick.splits["test"] == ([("x", "y"), ("the cat", "a dog"), ("the cat", "a cat sits")], [1, 0, 2])
    embed = lambda s: {t: hash_model.vector(t) for t in s}  # noqa: E731
    X, _ = featurize(mrpc, embed)["train"]
    a = np.stack([hash_model.vector(x) for x, _ in mrpc.splits["train"][0]])
    b = np.stack([hash_model.vector(x) for _, x in mrpc.splits["train"][0]])
    np.testing.assert_array_equal(X, np.c_[np.abs(a - b), a * b])  # mrpc.py / sick.py features
    X_extended, _ = featurize(mrpc, embed, protocol="extended")["train"]
    np.testing.assert_array_equal(X_extended, pair_features(a, b, "full"))


def test_unknown_protocol_and_labels_are_errors(tmp_path):
    root = write_pair_tasks(tmp_path / "downstream")
    with pytest.raises(ValueError, match="unknown transfer protocol 'nope'"):
        load_transfer_task(root, "MRPC", protocol="nope")
    path = root / "SICK" / "SICK_trial.txt"
    path.write_text(path.read_text().replace("NEUTRAL", "MAYBE"))
    with pytest.raises(ValueError, match=r"SICK_trial.txt:4: label 'MAYBE' is not CONTRADICTION"):
        load_transfer_task(root, "SICK-E")
