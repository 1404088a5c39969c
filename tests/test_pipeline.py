"""One pipeline end to end (issue #18): ``retromae-st pretrain/stage2`` over ``pretrain()``/``stage2()``,
trainer flags passed through, corpora readers, resume that always works, no dead ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retromae_st.checkpointing import COMPLETE_MARKER, LOSS_STATE_DIR, RUN_SETTINGS_FILE
from retromae_st.cli import main
from tests.conftest import REPO_ROOT, SAMPLE_CORPUS, build_tiny_bert

FAST = ["--max-steps", "2", "--batch-size", "4", "--max-seq-length", "32", "--disable_tqdm", "true"]


def lines(count: int, start: int = 0) -> list[str]:
    texts = [line for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts[start : start + count]


def cli(argv: list[str], capsys=None) -> tuple[int, str]:
    code = main([str(arg) for arg in argv])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def trainer_state(output: Path, step: int) -> dict:
    return json.loads((output / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())


def run_settings(output: Path, step: int) -> dict:
    path = output / "checkpoints" / f"checkpoint-{step}" / LOSS_STATE_DIR / RUN_SETTINGS_FILE
    return json.loads(path.read_text())


@pytest.fixture()
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines(30)) + "\n\n" + "\n".join(lines(30, 30)) + "\n", encoding="utf-8")
    return path


# -- help -----------------------------------------------------------------------------------------------


def test_top_level_help_does_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from retromae_st.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
        "assert 'pretrain' in out.getvalue() and 'stage2' in out.getvalue()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert completed.stdout.strip() == "[]", completed.stdout


def test_pretrain_help_shows_trainer_fields_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--gradient_accumulation_steps",
        "--save_steps",
        "--deepspeed",
        "--report_to",
        "--torch_compile",
    ):
        assert flag in text
    assert "--use_cpu" in text and "--method {retromae,dupmae}" in text
    assert "encoder input (default: 0.3)" in text  # our own flags show their help and defaults
    assert "peak learning rate (default: 0.0001)" in text


# -- end to end -------------------------------------------------------------------------------------------


def test_cli_retromae_passes_trainer_flags_and_config_file(tiny_bert_dir, corpus, tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("gradient_accumulation_steps: 2\nsave-steps: 1\nencoder_mask_ratio: 0.25\n")
    output = tmp_path / "run"
    argv = ["pretrain", "--model", tiny_bert_dir, "--corpus", corpus, "--output", output, *FAST]
    code, _ = cli(
        [*argv, "--no-pack", "--config-file", config_file, "--logging_steps", "1", "--save_total_limit", "5"]
    )
    assert code == 0
    state = trainer_state(output, 2)
    assert state["logging_steps"] == 1 and state["save_steps"] == 1
    assert (output / "checkpoints" / "checkpoint-1").is_dir()
    settings = run_settings(output, 2)
    assert settings["gradient_accumulation_steps"] == 2
    assert settings["losses"]["loss"]["encoder_mask_ratio"] == 0.25
    assert settings["method"] == "retromae" and settings["pack"] is False
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(output / "final")).encode(["a text"]).shape == (1, 64)
    assert (output / "masked_lm" / "model.safetensors").is_file()


def test_cli_dupmae_writes_the_dupmae_folder(tiny_bert_dir, corpus, tmp_path, tokenizer):
    from retromae_st import load_dupmae_model

    output = tmp_path / "run"
    code, _ = cli(
        [
            "pretrain",
            "--method",
            "dupmae",
            "--model",
            tiny_bert_dir,
            "--corpus",
            corpus,
            "--output",
            output,
            *FAST,
            "--no-pack",
            "--top-k",
            "8",
        ]
    )
    assert code == 0
    assert run_settings(output, 2)["losses"]["loss"]["class"] == "DupMAELoss"
    embedding = load_dupmae_model(str(output / "dupmae")).encode(["a text"], convert_to_tensor=True)
    assert embedding.shape[-1] == 64 + len(tokenizer) and torch.isfinite(embedding).all()  # [CLS] ; OT vector
    assert (embedding[0, 64:] != 0).sum() <= 8  # the top-k kept


def test_cli_stage2_trains_on_pairs_and_triplets(tiny_bert_dir, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    texts = lines(40)
    pairs.write_text(
        "query\tpassage\n" + "\n".join(f"q {i} {t[:20]}\t{t}" for i, t in enumerate(texts[:20])) + "\n"
    )
    triplets = tmp_path / "nli.jsonl"
    triplets.write_text(
        "\n".join(
            json.dumps({"anchor": a, "positive": a[::-1], "negative": b})
            for a, b in zip(texts[20:], texts[:20], strict=True)
        )
        + "\n"
    )
    output = tmp_path / "stage2"
    argv = [
        "stage2",
        "--model",
        tiny_bert_dir,
        "--data",
        f"msmarco={pairs}",
        triplets,
        "--output",
        output,
        *FAST,
    ]
    code, _ = cli([*argv, "--mae-columns", "msmarco=documents", "--save_steps", "1", "--mae-weight", "0.5"])
    assert code == 0
    settings = run_settings(output, 2)
    assert sorted(settings["losses"]) == ["msmarco", "nli"]
    assert settings["losses"]["msmarco"]["mae_columns"] == "documents"
    assert (
        settings["losses"]["nli"]["mae_columns"] == "all" and settings["losses"]["nli"]["mae_weight"] == 0.5
    )
    assert trainer_state(output, 1)["save_steps"] == 1
    assert (output / "final" / "modules.json").is_file()


def test_cli_jsonl_corpus_trains_on_the_text_field_not_the_json(tiny_bert_dir, tmp_path):
    from retromae_st.pretraining import pretraining_dataset

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(lines(24))) + "\n")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    dataset, _, _ = pretraining_dataset(
        str(corpus), tokenizer, 32, pack=False, text_field="body", shuffle_buffer_size=0, seed=0
    )
    from retromae_st.data import clean_text

    assert [row["text"] for row in dataset] == [clean_text(text, 0, "text", None)[0] for text in lines(24)]
    output = tmp_path / "run"
    code, _ = cli(
        [
            "pretrain",
            "--model",
            tiny_bert_dir,
            "--corpus",
            corpus,
            "--text-field",
            "body",
            "--output",
            output,
            *FAST,
            "--no-pack",
        ]
    )
    assert code == 0


def test_jsonl_without_the_text_field_is_an_error_naming_field_and_line(tiny_bert_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    code, err = cli(
        [
            "pretrain",
            "--model",
            tiny_bert_dir,
            "--corpus",
            corpus,
            "--output",
            tmp_path / "run",
            *FAST,
            "--no-pack",
        ],
        capsys,
    )
    assert code == 2
    assert "line 2" in err and "'text'" in err and "Traceback" not in err


def test_cli_glob_of_two_files(tiny_bert_dir, tmp_path):
    from retromae_st.corpora import stream_corpus

    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.txt").write_text("\n".join(lines(20)) + "\n")
    (folder / "b.txt").write_text("\n".join(lines(20, 20)) + "\n")
    rows = list(stream_corpus(str(folder / "*.txt")))
    assert [row["text"] for row in rows] == lines(40)
    assert {row["document_id"] for row in rows[:20]} != {row["document_id"] for row in rows[20:]}
    code, _ = cli(
        [
            "pretrain",
            "--model",
            tiny_bert_dir,
            "--corpus",
            folder / "*.txt",
            "--output",
            tmp_path / "run",
            *FAST,
            "--no-pack",
        ]
    )
    assert code == 0


def test_parquet_and_datasets_folder_corpora(tmp_path):
    from datasets import Dataset

    from retromae_st.corpora import stream_corpus

    Dataset.from_dict({"content": lines(5)}).to_parquet(str(tmp_path / "c.parquet"))
    Dataset.from_dict({"content": lines(3, 5)}).save_to_disk(str(tmp_path / "saved"))
    rows = list(stream_corpus([str(tmp_path / "c.parquet"), str(tmp_path / "saved")], text_field="content"))
    assert [row["text"] for row in rows] == lines(8)
    assert len({row["document_id"] for row in rows}) == 8
    with pytest.raises(FileNotFoundError, match="matches no file"):
        stream_corpus(str(tmp_path / "*.txt"))


def test_cli_from_config_and_tokenizer_without_model(tiny_bert_dir, corpus, tmp_path):
    output = tmp_path / "run"
    argv = [
        "pretrain",
        "--config",
        tiny_bert_dir / "config.json",
        "--tokenizer",
        tiny_bert_dir,
        "--corpus",
        corpus,
    ]
    code, _ = cli([*argv, "--output", output, *FAST, "--no-pack"])
    assert code == 0
    initial = load_file(output / "init" / "model.safetensors")
    trained = load_file(tiny_bert_dir / "model.safetensors")
    key = next(k for k in initial if "word_embeddings" in k)
    assert not torch.equal(initial[key], trained[next(k for k in trained if "word_embeddings" in k)])
    assert (output / "final" / "modules.json").is_file()


def test_pretrain_kwargs_win_over_recipe_defaults(tiny_bert_dir, corpus, tmp_path):
    from retromae_st.pretraining import pretrain

    output = tmp_path / "run"
    common = dict(max_steps=2, batch_size=4, max_seq_length=32, pack=False, disable_tqdm=True)
    pretrain(
        str(tiny_bert_dir),
        str(corpus),
        str(output),
        logging_steps=1,
        save_steps=1,
        save_total_limit=3,
        warmup_steps=0,
        weight_decay=0.0,
        report_to=[],
        **common,
    )
    state = trainer_state(output, 2)
    assert state["logging_steps"] == 1 and state["save_steps"] == 1
    assert sorted(os.listdir(output / "checkpoints")) == ["checkpoint-1", "checkpoint-2"]


def test_save_total_limit_below_two_is_raised_with_a_warning(tmp_path, caplog):
    from retromae_st.pretraining import training_arguments

    with caplog.at_level("WARNING"):
        args = training_arguments(
            str(tmp_path), 10, 4, 1e-4, 0, False, 0.1, None, {"save_total_limit": 1, "use_cpu": True}
        )
    assert args.save_total_limit == 2 and "raised to 2" in caplog.text


def test_bf16_on_cpu_with_use_cpu(tiny_bert_dir, corpus, tmp_path):
    output = tmp_path / "run"
    code, _ = cli(
        [
            "pretrain",
            "--model",
            tiny_bert_dir,
            "--corpus",
            corpus,
            "--output",
            output,
            *FAST,
            "--no-pack",
            "--bf16",
            "on",
            "--use_cpu",
        ]
    )
    assert code == 0
    args = torch.load(output / "checkpoints" / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert args.bf16 is True and args.use_cpu is True


# -- resume -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tokenizer):
    """An uninterrupted 4-step run (checkpoints at 2 and 4, both kept) through the CLI."""
    root = tmp_path_factory.mktemp("finished")
    model_dir = (
        build_tiny_bert(root / "model", tokenizer) if not (root / "model").exists() else root / "model"
    )
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines(60)) + "\n", encoding="utf-8")
    output = root / "run"
    argv = ["pretrain", "--model", model_dir, "--corpus", corpus, "--output", output, "--max-steps", "4"]
    argv += [
        "--batch-size",
        "4",
        "--max-seq-length",
        "32",
        "--no-pack",
        "--save_steps",
        "2",
        "--save_total_limit",
        "3",
    ]
    argv += ["--disable_tqdm", "true"]
    assert main([str(arg) for arg in argv]) == 0
    return argv, output


def truncate(checkpoint: Path, cut: str) -> None:
    """Leaves ``checkpoint`` as a save cut off at one point (the trainer writes the model first)."""
    removed = {
        "no model file": [
            "model.safetensors",
            "optimizer.pt",
            "scheduler.pt",
            "rng_state.pth",
            "trainer_state.json",
            LOSS_STATE_DIR,
        ],
        "no trainer state": ["trainer_state.json", LOSS_STATE_DIR],
        "no marker": [f"{LOSS_STATE_DIR}/{COMPLETE_MARKER}", f"{LOSS_STATE_DIR}/{RUN_SETTINGS_FILE}"],
    }[cut]
    for name in removed:
        path = checkpoint / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize("cut", ["no model file", "no trainer state", "no marker"])
def test_resume_skips_a_checkpoint_cut_off_mid_save(finished_run, cut, tmp_path, capsys, caplog):
    argv, finished = finished_run
    output = tmp_path / "run"
    shutil.copytree(finished, output)
    shutil.rmtree(output / "final")
    truncate(output / "checkpoints" / "checkpoint-4", cut)
    argv = [str(output) if arg == finished else arg for arg in argv]
    with caplog.at_level("WARNING"):
        code, err = cli([*argv, "--resume"], capsys)
    assert code == 0, err
    assert f"skipping {output / 'checkpoints' / 'checkpoint-4'}" in caplog.text  # says what it skipped, why
    assert f"continuing from {output / 'checkpoints' / 'checkpoint-2'}" in caplog.text
    assert (
        json.loads((output / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())[
            "global_step"
        ]
        == 4
    )
    expected = load_file(finished / "final" / "model.safetensors")
    resumed = load_file(output / "final" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for key in expected:  # resume = the uninterrupted run
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-6)


def test_resume_from_an_incomplete_checkpoint_is_refused(finished_run, tmp_path, capsys):
    argv, finished = finished_run
    output = tmp_path / "run"
    shutil.copytree(finished, output)
    truncate(output / "checkpoints" / "checkpoint-4", "no marker")
    argv = [str(output) if arg == finished else arg for arg in argv]
    code, err = cli([*argv, "--resume-from", output / "checkpoints" / "checkpoint-4"], capsys)
    assert code == 2 and "incomplete" in err and "--resume" in err


def test_resume_with_changed_settings_is_refused_naming_each(finished_run, tmp_path, capsys, tokenizer):
    argv, finished = finished_run
    output = tmp_path / "run"
    shutil.copytree(finished, output)
    shutil.rmtree(output / "checkpoints" / "checkpoint-4")
    argv = [str(output) if arg == finished else arg for arg in argv]
    changed = [
        *argv,
        "--resume",
        "--method",
        "dupmae",
        "--encoder-mask-ratio",
        "0.4",
        "--batch-size",
        "8",
        "--seed",
        "1",
    ]
    code, err = cli(changed, capsys)
    assert code == 2
    for name in (
        "losses.loss.class",
        "losses.loss.encoder_mask_ratio",
        "per_device_train_batch_size",
        "seed",
        "method",
    ):
        assert name in err
    assert "--force" in err
    bigger = build_tiny_bert(tmp_path / "bigger", tokenizer)
    config = json.loads((bigger / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (bigger / "config.json").write_text(json.dumps(config))
    swapped = [
        str(bigger) if prev == "--model" else arg for prev, arg in zip(["", *argv[:-1]], argv, strict=True)
    ]
    code, err = cli([*swapped, "--resume"], capsys)
    assert code == 2 and "model.num_hidden_layers: checkpoint 2, now 3" in err
    code, err = cli([*argv, "--resume", "--encoder-mask-ratio", "0.4", "--force"], capsys)
    assert code == 0, err


# -- no dead ends ---------------------------------------------------------------------------------------


def test_fresh_run_into_a_non_empty_output_is_refused_unless_overwrite(
    tiny_bert_dir, corpus, tmp_path, capsys
):
    output = tmp_path / "run"
    argv = ["pretrain", "--model", tiny_bert_dir, "--corpus", corpus, "--output", output, *FAST, "--no-pack"]
    assert cli(argv, capsys)[0] == 0
    (output / "checkpoints" / "checkpoint-99").mkdir()  # a stray checkpoint of the earlier run
    code, err = cli(argv, capsys)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    missing = [str(tmp_path / "missing.txt") if arg == corpus else arg for arg in argv]
    code, err = cli([*missing, "--overwrite"], capsys)
    assert code == 2 and "corpus file not found" in err
    assert (output / "final").is_dir()  # a mistyped corpus deletes nothing
    code, err = cli([*argv, "--overwrite", "--save_steps", "1"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(output / "checkpoints")) == ["checkpoint-1", "checkpoint-2"]


@pytest.mark.parametrize(
    ("length", "expected"),
    [("1", "leaves no room for text"), ("2", "leaves no room for text"), ("600", "exceeds the model's 512")],
)
def test_max_seq_length_is_checked_up_front(length, expected, tokenizer, corpus, tmp_path, capsys):
    from transformers import BertConfig, BertModel

    model_dir = tmp_path / "model"
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    assert config.max_position_embeddings == 512
    BertModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    argv = [
        "pretrain",
        "--model",
        model_dir,
        "--corpus",
        corpus,
        "--output",
        tmp_path / "run",
        *FAST,
        "--no-pack",
    ]
    code, err = cli([*argv, "--max-seq-length", length], capsys)
    assert code == 2 and "--max-seq-length" in err and expected in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_output_and_full_disk_are_one_line_errors(
    tiny_bert_dir, corpus, tmp_path, capsys, monkeypatch
):
    from retromae_st import pretraining, runs

    argv = ["pretrain", "--model", tiny_bert_dir, "--corpus", corpus, *FAST, "--no-pack"]

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(runs.tempfile, "NamedTemporaryFile", read_only)
        code, err = cli([*argv, "--output", tmp_path / "ro"], capsys)
    assert code == 1 and "Traceback" not in err
    assert (
        err.splitlines()[-1]
        == f"retromae-st: error: [Errno 13] output folder {tmp_path / 'ro'} is not writable (Permission denied)"
    )

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pretraining, "save_outputs", disk_full)
    code, err = cli([*argv, "--output", tmp_path / "full"], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == "retromae-st: error: [Errno 28] No space left on device"


@pytest.mark.slow  # ~40 s: two ranks of the real CLI
def test_cli_pretrain_under_torchrun_trains_and_ranks_agree(tiny_bert_dir, corpus, tmp_path):
    from tests.test_reliability_distributed import run_torchrun

    output = tmp_path / "run"
    arguments = ["--model", tiny_bert_dir, "--corpus", corpus, "--output", output, *FAST, "--max-steps", "3"]
    arguments += ["--no-pack", "--use_cpu", "--ddp_backend", "gloo", "--save_steps", "2"]
    result_path = tmp_path / "result.json"
    result = run_torchrun(
        "tests.distributed.cli_ranks_agree", [str(result_path), *map(str, arguments)], result_path
    )
    assert result["code"] == 0 and result["world_size"] == 2
    assert len(result["losses"]) == 3 and all(value == value for value in result["losses"])
    assert result["model_params"] == 0.0
    assert result["loss_params"] == 0.0, "the loss's decoder/MLM head drifted apart between ranks"
    assert (output / "final" / "modules.json").is_file()
    assert (output / "checkpoints" / "checkpoint-2" / LOSS_STATE_DIR / COMPLETE_MARKER).is_file()


# -- packing (retromae_st.packing) -------------------------------------------------------------------------


def test_txt_blank_lines_reach_the_packer_as_document_boundaries(corpus):
    from retromae_st.corpora import stream_corpus

    rows = list(stream_corpus(str(corpus)))
    assert [row["text"] for row in rows] == [*lines(30), "", *lines(30, 30)]
    assert [row["text"] for row in stream_corpus(str(corpus), keep_blank_lines=False)] == lines(60)


def test_file_corpora_are_streamed_packed_or_not(tiny_bert_dir, corpus):
    from datasets import IterableDataset
    from transformers import AutoTokenizer

    from retromae_st.pretraining import pretraining_dataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    for pack in (True, False):
        dataset, _, _ = pretraining_dataset(str(corpus), tokenizer, 32, pack, "text", 0, 0)
        assert isinstance(dataset, IterableDataset)  # never read whole into memory


def test_cli_packs_by_default_without_length_grouping(tiny_bert_dir, corpus, tmp_path, capsys):
    output = tmp_path / "run"
    code = main(
        [
            str(a)
            for a in ["pretrain", "--model", tiny_bert_dir, "--corpus", corpus, "--output", output, *FAST]
        ]
    )
    assert code == 0
    assert run_settings(output, 2)["pack"] is True
    printed = capsys.readouterr().out
    assert "packing:" in printed and "blocks of <= 32 tokens" in printed
    args = torch.load(output / "checkpoints" / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert args.batch_sampler == "batch_sampler"  # no length grouping of packed blocks


def test_packed_blocks_keep_documents_apart(tiny_bert_dir, tmp_path):
    from transformers import AutoTokenizer

    from retromae_st.pretraining import pretraining_dataset

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"text": text}) for text in ["alpha beta.", "gamma delta."]) + "\n"
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    dataset, _, stats = pretraining_dataset(str(corpus), tokenizer, 32, True, "text", 0, 0)
    assert [row["text"] for row in dataset] == ["alpha beta.", "gamma delta."]  # one document per jsonl line
    assert stats.documents == 2
