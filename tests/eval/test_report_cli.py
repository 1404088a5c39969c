from __future__ import annotations

import json
from pathlib import Path

import pytest

from retromae_st.cli import main
from retromae_st.eval.report import (
    compare_markdown,
    headline_metrics,
    load_result,
    plot_comparison,
    save_result,
)


def fake_result(model: str, sts: float, ndcg: float) -> dict:
    return {
        "model": model,
        "sts": {
            "tasks": {
                "STS12": {
                    "subsets": {"a": {"spearman": sts, "pearson": sts, "n": 3, "skipped": 1}},
                    "all": {"spearman": sts, "pearson": sts, "n": 3, "skipped": 1},
                    "mean_spearman": sts,
                    "wmean_spearman": sts,
                    "mean_pearson": sts,
                    "wmean_pearson": sts,
                    "main": {"setting": "all", "spearman": sts},
                }
            }
        },
        "beir": {
            "toy": {
                "split": "test",
                "metrics": {"NDCG@10": ndcg, "Recall@100": 0.9, "MRR@10": 0.5, "evaluated_queries": 3},
                "counts": {"corpus_size": 10},
                "retriever": {"index_type": "flat", "cache": "hit"},
            }
        },
    }


def test_save_result_and_compare(tmp_path):
    first, second = fake_result("runs/model-a", 70.0, 0.5), fake_result("runs/model-b", 75.0, 0.4)
    json_path, md_path = save_result(first, tmp_path)
    assert json_path.name == "runs__model-a.json" and load_result(json_path)["model"] == "runs/model-a"
    assert "| STS12 | **all** | 3 | 1 | **70.00** |" in md_path.read_text()
    assert headline_metrics(first) == {
        "STS STS12 all Spearman": 70.0,
        "BEIR toy NDCG@10": 50.0,
        "BEIR toy Recall@100": 90.0,
    }
    table = compare_markdown([first, second], ["a", "b"])
    assert "| STS STS12 all Spearman | 70.00 | **75.00** |" in table
    assert "| BEIR toy NDCG@10 | **50.00** | 40.00 |" in table
    pngs = plot_comparison([first, second], tmp_path / "cmp.png", ["a", "b"])
    assert [p.name for p in pngs] == ["cmp-sts.png", "cmp-beir.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_load_result_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="result file not found"):
        load_result(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a JSON result file"):
        load_result(tmp_path / "bad.json")


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "tiny"
    tiny_model.save(str(path))
    return path


def test_cli_sts_beir_and_compare(tmp_path, tiny_model_dir, capsys):
    sts_dir = tmp_path / "STS12-en-test"
    sts_dir.mkdir()
    (sts_dir / "STS.input.x.txt").write_text(
        "a cat\ta dog\nthe sun\tthe moon\nred car\tblue bus\nhi\thello\n"
    )
    (sts_dir / "STS.gs.x.txt").write_text("3\n2\n\n4\n")
    out = tmp_path / "out"
    assert (
        main(["eval", "sts", "--model", str(tiny_model_dir), "--data", str(sts_dir), "--output", str(out)])
        == 0
    )
    result = json.loads((out / f"{tiny_model_dir.parent.name}__tiny.json").read_text())
    assert result["sts"]["tasks"]["STS12"]["all"]["n"] == 3
    assert result["sts"]["tasks"]["STS12"]["all"]["skipped"] == 1

    beir_dir = tmp_path / "beir" / "toy"
    (beir_dir / "qrels").mkdir(parents=True)
    (beir_dir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) + "\n" for i in range(5))
    )
    (beir_dir / "queries.jsonl").write_text('{"_id": "q1", "text": "doc 1"}\n')
    (beir_dir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    args = [
        "eval",
        "beir",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(tmp_path / "beir"),
        "--output",
        str(out),
    ]
    args += ["--name", "beir-run", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    beir_result = json.loads((out / "beir-run.json").read_text())
    assert beir_result["beir"]["toy"]["metrics"]["evaluated_queries"] == 1
    assert main(args) == 2  # the result exists: never overwritten silently
    assert "beir-run.json already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0  # second run reads the cache
    assert json.loads((out / "beir-run.json").read_text())["beir"]["toy"]["retriever"]["cache"] == "hit"

    compare_args = [
        "eval",
        "compare",
        str(out / f"{tiny_model_dir.parent.name}__tiny.json"),
        str(out / "beir-run.json"),
        "--output",
        str(out),
    ]
    assert main([*compare_args, "--plot"]) == 0
    assert (out / "compare.md").is_file() and (out / "compare-sts.png").is_file()
    assert (out / "compare-beir.png").is_file()


def test_cli_reports_clear_errors(tmp_path, capsys):
    data = tmp_path / "sts-dev.csv"
    data.write_text("g\tf\t2012\t1\t1.0\ta\tb\ng\tf\t2012\t2\t2.0\tc\td\n")
    args = [
        "eval",
        "sts",
        "--model",
        str(tmp_path / "no-model"),
        "--data",
        str(data),
        "--output",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert "model folder not found" in capsys.readouterr().err  # the data is valid: the model is the problem
    assert main(["eval", "compare", str(tmp_path / "missing.json")]) == 2
    assert "result file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "beir"])  # argparse: --model and --data are required
