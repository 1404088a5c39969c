from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retromae_st.eval.senteval import (
    available_transfer_tasks,
    cross_validated_accuracy,
    cv_selected_accuracy,
    dev_selected_accuracy,
    evaluate_transfer,
    load_transfer_task,
    pair_features,
)


def separable(n: int, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((n, dim))
    X[:, 0] += np.where(y == 1, 4.0, -4.0)
    return X, y


def random_labels(n: int, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)), rng.integers(0, 2, n)


def test_cross_validation_separable_reaches_100_and_random_is_chance():
    assert cross_validated_accuracy(*separable(200), kfold=3)["accuracy"] >= 99.0
    chance = cross_validated_accuracy(*random_labels(400), kfold=3)["accuracy"]
    assert 35.0 <= chance <= 65.0


def test_dev_and_cv_selected_protocols():
    train, dev, test = separable(150, seed=1), separable(60, seed=2), separable(100, seed=3)
    assert dev_selected_accuracy(train, dev, test)["accuracy"] >= 99.0
    assert cv_selected_accuracy(train, test, kfold=3)["accuracy"] >= 99.0
    noise = random_labels(150, seed=1), random_labels(60, seed=2), random_labels(400, seed=3)
    assert 35.0 <= dev_selected_accuracy(*noise)["accuracy"] <= 65.0
    result = cv_selected_accuracy(noise[0], noise[2], kfold=3)
    assert 35.0 <= result["accuracy"] <= 65.0 and "f1" in result


def test_deterministic_under_a_seed():
    data = random_labels(120, seed=5)
    first = cross_validated_accuracy(*data, kfold=3, seed=7)
    assert first == cross_validated_accuracy(*data, kfold=3, seed=7)


def test_pair_features_layout():
    u, v = np.array([[1.0, -2.0]]), np.array([[3.0, 1.0]])
    np.testing.assert_array_equal(pair_features(u, v), [[1, -2, 3, 1, 2, 3, 3, -2]])


# --- readers and the end-to-end run -----------------------------------------------------------------------------------


def make_downstream(root: Path, n: int = 40) -> Path:
    """A tiny SentEval folder: CR (pos/neg), SST2, TREC, MRPC; labels are marked by a word in each sentence."""
    (root / "CR").mkdir(parents=True)
    (root / "CR" / "custrev.pos").write_text("".join(f"good review {i} .\n" for i in range(n)))
    (root / "CR" / "custrev.neg").write_text("".join(f"bad review {i} .\n" for i in range(n)) + "\n")
    sst = root / "SST" / "binary"
    sst.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        lines = [f"good film {split} {i} \t1" if i % 2 else f"bad film {split} {i} \t0" for i in range(n)]
        (sst / f"sentiment-{split}").write_text("\n".join(lines) + "\n")
    (root / "TREC").mkdir()
    for name in ("train_5500.label", "TREC_10.label"):
        lines = [
            f"NUM:count how many {name} {i} ?" if i % 2 else f"LOC:city where is {name} {i} ?"
            for i in range(n)
        ]
        (root / "TREC" / name).write_text("\n".join(lines) + "\n", encoding="latin-1")
    (root / "MRPC").mkdir()
    for split in ("train", "test"):
        lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        lines += [
            f"{i % 2}\t{i}\t{i + 1}\t{'good' if i % 2 else 'bad'} left {split} {i}\tright {split} {i}"
            for i in range(n)
        ]
        (root / "MRPC" / f"msr_paraphrase_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def label_model(hash_model_class):
    direction = np.zeros(16, dtype=np.float32)
    direction[0] = 10.0
    return hash_model_class(overrides={"good": direction, "NUM:": direction, "how many": direction})


def test_readers(tmp_path):
    """File order with the extended protocol (the senteval protocol's order is tested in test_senteval_protocol)."""
    root = make_downstream(tmp_path / "downstream")
    assert available_transfer_tasks(root) == ["CR", "SST2", "TREC", "MRPC"]
    cr = load_transfer_task(root, "CR", protocol="extended")
    inputs, labels = cr.splits["all"]
    assert len(inputs) == 80 and sum(labels) == 40 and inputs[0] == "good review 0 ."  # empty line dropped
    assert (
        cr.empty_lines == 1 and len(load_transfer_task(root, "CR").splits["all"][0]) == 81
    )  # SentEval keeps it
    trec = load_transfer_task(root, "TREC", protocol="extended")
    assert trec.splits["train"][0][:2] == ["where is train_5500.label 0 ?", "how many train_5500.label 1 ?"]
    assert trec.splits["train"][1][:2] == [4, 5]  # SentEval's ids: LOC 4, NUM 5
    mrpc = load_transfer_task(root, "MRPC", protocol="extended")
    assert mrpc.splits["test"][0][1] == ("good left test 1", "right test 1")
    assert mrpc.splits["test"][1][:2] == [0, 1]
    sst = load_transfer_task(root, "SST2", protocol="extended")
    assert sst.splits["dev"][0][0] == "bad film dev 0" and sst.splits["dev"][1][:2] == [0, 1]


@pytest.mark.parametrize("protocol", ["senteval", "extended"])
def test_evaluate_transfer_end_to_end(tmp_path, label_model, protocol):
    root = make_downstream(tmp_path / "downstream")
    result = evaluate_transfer(label_model, root, kfold=3, protocol=protocol)
    assert set(result["tasks"]) == {"CR", "SST2", "TREC", "MRPC"} and result["protocol"] == protocol
    for name, values in result["tasks"].items():
        assert values["accuracy"] >= 98.0, name  # CR: SentEval's protocol keeps the empty line as a sample
        assert values["sources"] and all(Path(s).is_file() for s in values["sources"])
        assert values["seconds"] > 0 and values["cpu_seconds"] > 0
    assert result["tasks"]["MRPC"]["f1"] >= 99.0
    assert label_model.calls == 4  # one encode call per task


def write_sick_without_test(root: Path) -> None:
    (root / "SICK").mkdir()
    for name in ("SICK_train.txt", "SICK_trial.txt"):
        (root / "SICK" / name).write_text("pair_ID\tsentence_A\tsentence_B\tentailment_judgment\n")


def test_sick_e_named_without_its_test_file(tmp_path, hash_model):
    root = make_downstream(tmp_path / "downstream")
    write_sick_without_test(root)
    with pytest.raises(FileNotFoundError, match=r"SICK-E: file not found: .*SICK_test_annotated.txt"):
        evaluate_transfer(hash_model, root, tasks=["SICK-E"], kfold=3)
    result = evaluate_transfer(hash_model, root, tasks=None, kfold=3)
    assert "SICK_test_annotated.txt" in result["skipped"]["SICK-E"]
    assert set(result["skipped"]) == {"MR", "SUBJ", "MPQA", "SST5", "SICK-E"}  # every absent task is named


def test_bad_transfer_input(tmp_path):
    root = make_downstream(tmp_path / "downstream")
    with pytest.raises(ValueError, match="unknown transfer task"):
        load_transfer_task(root, "NOPE")
    (root / "TREC" / "TREC_10.label").write_text("no colon here\n")
    with pytest.raises(ValueError, match=r"TREC_10.label:1: expected 'COARSE:fine question'"):
        load_transfer_task(root, "TREC")
    (root / "MRPC" / "msr_paraphrase_test.txt").write_text("Quality\t#1 String\n1\ta\n")
    with pytest.raises(ValueError, match=r"msr_paraphrase_test.txt: header has no column '#2 String'"):
        load_transfer_task(root, "MRPC")
    with pytest.raises(FileNotFoundError, match="rt-polarity.pos"):
        load_transfer_task(root, "MR")
