"""Issue #19: nothing overwritten or hidden, silent data problems, feedback, and readable comparisons."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from test_beir import write_beir
from test_senteval import make_downstream, write_sick_without_test

from retromae_st.cli import main, run_sts
from retromae_st.eval.beir import encode_in_chunks, evaluate_beir, load_beir_folder
from retromae_st.eval.report import (
    best_cells,
    check_names,
    compare_markdown,
    default_run_name,
    headline_metrics,
    plot_comparison,
    unique_names,
)
from retromae_st.eval.senteval import cross_validated_accuracy
from retromae_st.eval.sts import evaluate_sts, read_sts_path, read_sts_paths


def stsb_rows(n: int = 5, start: int = 0) -> str:
    return "".join(
        f"main-captions\tMSRvid\t2012test\t{i:04d}\t{i % 5}.0\tsb left {i}\tsb right {i}\n"
        for i in range(start, start + n)
    )


@pytest.fixture
def stsb_folder(tmp_path) -> Path:
    root = tmp_path / "downstream"
    (root / "STS" / "STSBenchmark").mkdir(parents=True)
    (root / "STS" / "STSBenchmark" / "sts-dev.csv").write_text(stsb_rows())
    return root


@pytest.fixture
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "exp1" / "final"
    tiny_model.save(str(path))
    return path


# --- nothing overwritten, nothing hidden ------------------------------------------------------------------------------


def test_default_run_name_is_the_last_two_path_components():
    assert default_run_name("runs/exp1/final") == "exp1__final"
    assert default_run_name("runs/exp2/final/") == "exp2__final"
    assert (
        default_run_name("sentence-transformers/all-MiniLM-L6-v2")
        == "sentence-transformers__all-MiniLM-L6-v2"
    )
    assert default_run_name("model") == "model"


def test_two_final_folders_get_two_result_files(tmp_path, tiny_model, stsb_folder):
    out = tmp_path / "out"
    for experiment in ("exp1", "exp2"):
        model_dir = tmp_path / "runs" / experiment / "final"
        tiny_model.save(str(model_dir))
        assert (
            main(["eval", "sts", "--model", str(model_dir), "--data", str(stsb_folder), "--output", str(out)])
            == 0
        )
    assert sorted(p.name for p in out.glob("*.json")) == ["exp1__final.json", "exp2__final.json"]


def test_every_task_names_its_source_file(tmp_path, stsb_folder, hash_model):
    result = evaluate_sts(hash_model, read_sts_paths([stsb_folder]))
    assert result["tasks"]["STSBenchmark"]["subsets"]["dev"]["source"].endswith("STSBenchmark/sts-dev.csv")
    beir = write_beir(
        tmp_path / "toy", [{"_id": "d1", "text": "x"}], [{"_id": "q1", "text": "y"}], [("q1", "d1", 1)]
    )
    assert evaluate_beir(hash_model, beir)["source"].endswith("qrels/test.tsv")


def test_the_same_subset_twice_is_an_error_naming_both_files(stsb_folder):
    dev_file = stsb_folder / "STS" / "STSBenchmark" / "sts-dev.csv"
    copy = stsb_folder.parent / "stsb" / "sts-dev.csv"
    copy.parent.mkdir()
    copy.write_text(dev_file.read_text())
    with pytest.raises(
        ValueError, match=r"STSBenchmark subset 'dev' given twice: .*sts-dev.csv and .*stsb/sts-dev.csv"
    ):
        read_sts_paths([stsb_folder, copy])
    test_file = copy.parent / "sts-test.csv"
    test_file.write_text(stsb_rows(4, start=10))
    merged = read_sts_paths([stsb_folder, test_file])["STSBenchmark"]  # different splits of one task: merged
    assert [s.name for s in merged.subsets] == ["dev", "test"]


def test_k_values_without_10_or_100_write_results(tmp_path, tiny_model_dir, capsys):
    corpus = [{"_id": f"d{i}", "text": f"doc {i}"} for i in range(12)]
    beir = write_beir(tmp_path / "beir" / "toy", corpus, [{"_id": "q1", "text": "doc 1"}], [("q1", "d1", 1)])
    out = tmp_path / "out"
    args = ["eval", "beir", "--model", str(tiny_model_dir), "--data", str(beir), "--output", str(out)]
    assert main([*args, "--k-values", "1", "5", "--no-cache"]) == 0
    result = json.loads((out / "exp1__final.json").read_text())["beir"]["toy"]
    assert {"NDCG@1", "NDCG@5", "Recall@5", "MRR@10"} <= set(result["metrics"]) and "NDCG@10" not in result[
        "metrics"
    ]
    assert "NDCG@5" in (out / "exp1__final.md").read_text()
    assert set(headline_metrics({"beir": {"toy": result}})) == {"BEIR toy NDCG@5", "BEIR toy Recall@5"}
    assert main([*args, "--k-values", "0", "--overwrite"]) == 2
    assert "k values must be positive" in capsys.readouterr().err


def test_unwritable_output_fails_before_any_work(tmp_path, stsb_folder, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # the model does not exist either: the output is checked first, before data or model
    code = main(
        [
            "eval",
            "sts",
            "--model",
            str(tmp_path / "no-model"),
            "--data",
            str(stsb_folder),
            "--output",
            str(blocker / "out"),
        ]
    )
    assert code == 1 and "output folder" in capsys.readouterr().err  # an I/O failure: exit 1 (docs/cli.md)


def test_left_out_tasks_are_named_on_one_line(tmp_path, tiny_model_dir, capsys):
    root = make_downstream(tmp_path / "downstream", n=12)
    write_sick_without_test(root)
    base = ["eval", "transfer", "--model", str(tiny_model_dir), "--senteval", str(root), "--kfold", "2"]
    assert main([*base, "--output", str(tmp_path / "out"), "--tasks", "CR"]) == 0
    assert main([*base, "--output", str(tmp_path / "out2"), "--tasks", "SICK-E"]) == 2
    assert "SICK_test_annotated.txt" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "out3"), "--tasks", "CR", "TREC"]) == 0
    capsys.readouterr()
    from retromae_st.cli import report_left_out

    report_left_out(
        {"transfer": {"skipped": {"SICK-E": "missing SICK/SICK_test_annotated.txt", "MR": "missing x"}}}
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "SICK-E" in lines[0] and "MR" in lines[0]


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "high"])
def test_non_finite_or_non_numeric_gold_is_an_error_naming_the_line(tmp_path, bad):
    folder = tmp_path / "STS12-en-test"
    folder.mkdir()
    (folder / "STS.input.x.txt").write_text("a\tb\nc\td\ne\tf\n")
    (folder / "STS.gs.x.txt").write_text(f"1\n{bad}\n3\n")
    with pytest.raises(ValueError, match=rf"STS.gs.x.txt:2: gold score '{bad}' is not a"):
        read_sts_path(folder)


def test_nan_in_a_datasets_folder_is_an_error(tmp_path):
    from datasets import Dataset

    Dataset.from_dict(
        {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": [1.0, float("nan")]}
    ).save_to_disk(tmp_path / "ds")
    with pytest.raises(ValueError, match=r"ds \[ds\] 'score' row:1: gold score nan is not a finite number"):
        read_sts_path(tmp_path / "ds")


def test_malformed_first_qrels_line_is_not_taken_for_a_header(tmp_path):
    beir = write_beir(
        tmp_path / "toy", [{"_id": "d1", "text": "x"}], [{"_id": "q1", "text": "y"}], [], header=False
    )
    (beir / "qrels" / "test.tsv").write_text("q1\td1\tone\nq1\td1\t1\n")
    with pytest.raises(ValueError, match=r"test.tsv:1: relevance 'one' is not a number"):
        load_beir_folder(beir)
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert load_beir_folder(beir).qrels == {"q1": {"d1": 1}}


def test_empty_queries_warn_and_all_empty_is_an_error(tmp_path):
    corpus = [{"_id": "d1", "text": "x"}]
    queries = [{"_id": "q1", "text": ""}, {"_id": "q2", "text": "y"}]
    beir = write_beir(tmp_path / "toy", corpus, queries, [("q1", "d1", 1), ("q2", "d1", 1)])
    with pytest.warns(UserWarning, match=r"1 of 2 judged queries have empty text \(e.g. 'q1'\)"):
        assert load_beir_folder(beir).stats["empty_queries"] == 1
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": " "}\n{"_id": "q2", "text": ""}\n')
    with pytest.raises(ValueError, match="all 2 judged queries have empty text"):
        load_beir_folder(beir)


# --- feedback ---------------------------------------------------------------------------------------------------------


def test_beir_progress_moves_inside_a_chunk():
    calls = []

    def encode(texts, batch_size, convert_to_numpy):
        calls.append(len(texts))
        return np.zeros((len(texts), 2))

    encode_in_chunks(
        encode,
        [f"t{i}" for i in range(100)],
        batch_size=4,
        chunk_size=10_000,
        show_progress_bar=False,
        desc="",
    )
    assert len(calls) > 1 and sum(calls) == 100  # the bar is updated after each piece, not once per 10k chunk


def test_transfer_fits_show_progress(capsys, monkeypatch):
    import functools

    from retromae_st.eval import senteval

    # Redraw on every update: tqdm's default 0.1 s redraw interval would make the last count timing-dependent.
    monkeypatch.setattr(senteval, "tqdm", functools.partial(senteval.tqdm, mininterval=0, miniters=1))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((30, 3)), rng.integers(0, 2, 30)
    cross_validated_accuracy(X, y, kfold=2, show_progress_bar=True)
    assert "26/26" in capsys.readouterr().err  # 2 outer folds x (6 C x 2 inner folds + 1)


def test_sts_from_the_cli_shows_encoding_progress(stsb_folder, hash_model_class):
    seen = []

    class Recording(hash_model_class):
        def encode(self, sentences, **kwargs):
            seen.append(kwargs.get("show_progress_bar"))
            return super().encode(sentences, **kwargs)

    run_sts(Recording(), read_sts_paths([stsb_folder]), Namespace(batch_size=8, similarity="cosine"))
    assert seen == [True]


def test_data_is_validated_before_the_model_loads(tmp_path, capsys):
    folder = tmp_path / "STS12-en-test"
    folder.mkdir()
    (folder / "STS.input.x.txt").write_text("a\tb\n")
    (folder / "STS.gs.x.txt").write_text("1\n2\n")
    code = main(
        [
            "eval",
            "sts",
            "--model",
            str(tmp_path / "no-model"),
            "--data",
            str(folder),
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 2 and "must align line by line" in capsys.readouterr().err  # not "model folder not found"


def test_timings_in_every_section(tmp_path, tiny_model_dir, stsb_folder):
    out = tmp_path / "out"
    assert (
        main(
            ["eval", "sts", "--model", str(tiny_model_dir), "--data", str(stsb_folder), "--output", str(out)]
        )
        == 0
    )
    result = json.loads((out / "exp1__final.json").read_text())
    assert result["seconds"] > 0 and result["sts"]["seconds"] > 0
    assert result["sts"]["tasks"]["STSBenchmark"]["seconds"] > 0


# --- compare and plots ------------------------------------------------------------------------------------------------


def test_stsb_dev_has_one_name_whatever_the_route(stsb_folder, hash_model):
    dev_file = stsb_folder / "STS" / "STSBenchmark" / "sts-dev.csv"
    via_folder = {"sts": evaluate_sts(hash_model, read_sts_paths([stsb_folder]))}
    via_file = {"sts": evaluate_sts(hash_model, read_sts_paths([dev_file]))}
    assert (
        headline_metrics(via_folder)
        == headline_metrics(via_file)
        == {
            "STS STSBenchmark dev Spearman": pytest.approx(
                headline_metrics(via_file)["STS STSBenchmark dev Spearman"]
            )
        }
    )


def test_sick_r_reports_test_and_all_and_split_tasks_no_wmean(tmp_path, hash_model):
    root = tmp_path / "downstream"
    (root / "SICK").mkdir(parents=True)
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
    for k, name in enumerate(("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt")):
        rows = "".join(
            f"{i}\ts{k} a {i}\ts{k} b {i}\t{1 + (i * 7 % 5) * 0.9:.1f}\tNEUTRAL\n" for i in range(6)
        )
        (root / "SICK" / name).write_text(header + rows)
    result = evaluate_sts(hash_model, read_sts_paths([root]))["tasks"]["SICK-R"]
    assert [h["setting"] for h in result["headlines"]] == ["test", "all (MTEB)"]
    assert result["all"]["n"] == 18 and "wmean_spearman" not in result
    assert {"STS SICK-R test Spearman", "STS SICK-R all (MTEB) Spearman"} == set(
        headline_metrics({"sts": {"tasks": {"SICK-R": result}}})
    )
    (root / "SICK" / "SICK_test_annotated.txt").unlink()
    partial = evaluate_sts(hash_model, read_sts_paths([root]))
    assert [h["setting"] for h in partial["tasks"]["SICK-R"]["headlines"]] == ["trial", "all (train+trial)"]
    assert partial["missing_files"][0].endswith("SICK_test_annotated.txt")


def fake(model: str, name: str | None = None, **metrics: float) -> dict:
    tasks = {t: {"main": {"setting": "all", "spearman": v}} for t, v in metrics.items()}
    return {"model": model, "name": name or default_run_name(model), "sts": {"tasks": tasks}}


def test_no_winner_among_ties_and_empty_cells_for_missing():
    assert best_cells([70.0, 70.001]) == set()  # equal at the 2 decimals shown
    assert best_cells([70.0, 71.0]) == {1}
    assert best_cells([70.0, None]) == set()
    table = compare_markdown([fake("a/x", STS12=70.0, STS13=60.0), fake("b/x", STS12=70.0)], ["a", "b"])
    assert "| STS STS12 all Spearman | 70.00 | 70.00 |" in table
    assert "| STS STS13 all Spearman | 60.00 |  |" in table


def test_run_names_are_unique():
    results = [fake("runs/exp1/final", "final"), fake("runs/exp2/final", "final")]
    assert unique_names(results, ["r/one.json", "r/two.json"]) == ["final (one.json)", "final (two.json)"]
    assert len(set(unique_names(results))) == 2
    with pytest.raises(ValueError, match="--names repeats 'x'"):
        check_names(["x", "x"], 2)


def test_one_readable_chart_per_family(tmp_path):
    from PIL import Image

    first = fake("a/x", STS12=70.0, STS13=60.0)
    first["transfer"] = {"tasks": {"MR": {"accuracy": 80.0}, "MRPC": {"accuracy": 70.0, "f1": 80.0}}}
    second = fake("b/x", STS12=72.0)  # no STS13 and no transfer: no bars, not zero bars
    paths = plot_comparison([first, second], tmp_path / "compare.png", ["a", "b"])
    assert [p.name for p in paths] == ["compare-sts.png", "compare-transfer.png"]
    for path in paths:
        width, height = Image.open(path).size
        assert width <= 1400 and height <= 1400


def test_unwritable_embedding_cache_fails_before_the_model_loads(tmp_path, capsys):
    from retromae_st.eval.beir import DenseFaissRetriever

    beir = write_beir(
        tmp_path / "beir" / "toy",
        [{"_id": "d1", "text": "x"}],
        [{"_id": "q1", "text": "y"}],
        [("q1", "d1", 1)],
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["eval", "beir", "--data", str(beir), "--output", str(tmp_path / "out")]
    # the model does not exist: the cache is checked first, before the model loads and the corpus is encoded
    code = main([*args, "--model", str(tmp_path / "no-model"), "--cache-dir", str(blocker / "cache")])
    assert code == 1 and "embedding cache folder" in capsys.readouterr().err
    with pytest.raises(PermissionError, match="embedding cache folder"):
        DenseFaissRetriever(object(), cache_dir=blocker / "cache")  # the Python API checks it up front too
