"""Reliability: streamed corpora, hostile input, interrupted checkpoints, bf16, safe file formats."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset, IterableDataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import DefaultBatchSampler

from retromae_st import RetroMAELoss, load_cls_model
from retromae_st.checkpointing import (
    COMPLETE_MARKER,
    LOSS_STATE_DIR,
    is_complete_checkpoint,
    last_complete_checkpoint,
)
from retromae_st.data import NOTHING_TO_RECONSTRUCT, clean_text, load_text_corpus
from tests.test_training import logged_terms, make_trainer

DATA = Path(__file__).parent / "data"
HOSTILE = [DATA / "hostile.txt", DATA / "hostile_bytes.txt"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def train_on_stream(model_dir, dataset, output_dir, max_steps, batch_size=8):
    torch.manual_seed(0)
    model = load_cls_model(str(model_dir), max_seq_length=64)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=5e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=3,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=RetroMAELoss(model)
    )
    trainer.train()
    return trainer, model


# 1. Streaming ----------------------------------------------------------------------------------


def test_load_text_corpus_streams_and_trains(tiny_bert_dir, sample_texts, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(sample_texts[:40]))
    )
    dataset, dropped = load_text_corpus(corpus)
    assert isinstance(dataset, IterableDataset)
    assert [row["text"] for row in dataset] == [
        clean_text(t, 0, "text", 20_000)[0] for t in sample_texts[:40]
    ]
    trainer, _ = train_on_stream(tiny_bert_dir, dataset, tmp_path / "out", max_steps=3)
    assert len(logged_terms(trainer)) == 3
    assert dropped.total == 0


def test_streamed_rows_with_nothing_to_reconstruct_are_dropped_and_counted(tokenizer, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a sentence\n🙂🙂 🎉\nanother one\n🙂\nlast line\n", encoding="utf-8")
    dataset, dropped = load_text_corpus(corpus, tokenizer=tokenizer, token_rules="skip_special")
    assert [row["text"] for row in dataset] == ["a sentence", "another one", "last line"]
    assert dropped.reasons == {NOTHING_TO_RECONSTRUCT: 2}
    authors, kept_all = load_text_corpus(corpus, tokenizer=tokenizer)  # [UNK] is predicted: nothing dropped
    assert len(list(authors)) == 5 and kept_all.total == 0


def emoji_corpus(sample_texts, share=0.03, size=400):
    """``size`` lines of which ``share`` are emoji-only (nothing but [UNK] for the MiniLM vocabulary), spread out."""
    emoji = ["🙂", "🎉🎉", "🙂 🎉", "👍 🙂 🎉", "🚀"]
    count = round(size * share)
    lines = list(sample_texts[: size - count])
    step = len(lines) // count
    for i in range(count):
        lines.insert(i * (step + 1), emoji[i % len(emoji)])
    return lines


@pytest.mark.parametrize("pack", [None, False], ids=["default-packed", "unpacked-length-grouped"])
def test_emoji_corpus_trains_to_the_end_with_the_default_pretrain_settings(
    tiny_bert_dir, sample_texts, tmp_path, monkeypatch, pack
):
    """3% emoji-only lines, with the default settings (packed blocks) and one line per example (then
    length-grouped by default): unpacked, the emoji lines are the shortest, so they meet in all-[UNK] batches,
    the batches that stopped such runs before. Under the authors' rules those have no encoder label but
    decoder targets ([UNK]): one whole epoch runs to the end, every logged term finite, nothing dropped or
    skipped."""
    from retromae_st.pretraining import pretrain

    label_counts = []  # (encoder labels, decoder labels) of every trained batch
    compute_loss_terms = RetroMAELoss.compute_loss_terms

    def counting_compute_loss_terms(self, features, masks):
        label_counts.append(
            (int((masks.encoder_labels != -100).sum()), int((masks.decoder_labels != -100).sum()))
        )
        return compute_loss_terms(self, features, masks)

    monkeypatch.setattr(RetroMAELoss, "compute_loss_terms", counting_compute_loss_terms)
    lines = emoji_corpus(sample_texts)
    batch_size = 2
    steps = len(lines) // batch_size  # unpacked: the whole epoch, every batch, the emoji ones included
    result = pretrain(
        str(tiny_bert_dir),
        Dataset.from_dict({"text": lines}),
        str(tmp_path / "run"),
        max_steps=steps,
        batch_size=batch_size,
        max_seq_length=32,
        disable_tqdm=True,
        **({} if pack is None else {"pack": pack}),
    )
    dropped = result.packing.dropped if pack is None else result.dropped
    assert dropped.total == 0 and result.loss.skipped_batches == 0
    assert Path(result.sentence_transformer_dir, "config.json").is_file()
    state = json.loads(
        (tmp_path / "run" / "checkpoints" / f"checkpoint-{steps}" / "trainer_state.json").read_text()
    )
    assert state["global_step"] == steps and len(label_counts) == steps
    history = [entry for entry in state["log_history"] if "encoder_mlm" in entry]
    assert history and all(
        math.isfinite(e["encoder_mlm"]) and math.isfinite(e["decoder_mlm"]) for e in history
    )
    if pack is False:  # An all-[UNK] batch was trained: no encoder label, decoder targets.
        assert any(encoder == 0 and decoder > 0 for encoder, decoder in label_counts)


class InOrderBatchSampler(DefaultBatchSampler):
    """The rows in dataset order, ``batch_size`` at a time."""

    def __iter__(self):
        indices = list(range(len(self.sampler)))
        for start in range(0, len(indices), self.batch_size):
            yield indices[start : start + self.batch_size]


def test_unk_batches_under_the_old_rule_are_skipped_not_fatal(tiny_bert_dir, sample_texts, tmp_path, caplog):
    """Unprepared data whose batches are all [UNK], old rule: training goes on, each such step counted and
    warned, the other steps train."""
    torch.manual_seed(0)
    model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    loss = RetroMAELoss(model, token_rules="skip_special")
    dataset = Dataset.from_dict({"text": ["🙂"] * 8 + list(sample_texts[:8]) + ["🎉 🙂"] * 8})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=8,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        batch_sampler=InOrderBatchSampler,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer.state.global_step == 3
    assert loss.skipped_batches == 2
    assert "2 such batch(es) so far" in caplog.text
    assert any(not torch.equal(before[name], value) for name, value in model.named_parameters())


def test_load_text_corpus_rejects_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_files"):
        load_text_corpus(tmp_path / "missing.txt")
    (tmp_path / "corpus.csv").write_text("a\n")
    with pytest.raises(ValueError, match="data_files"):
        load_text_corpus(tmp_path / "corpus.csv")
    (tmp_path / "corpus.txt").write_text("a\n")
    with pytest.raises(ValueError, match="max_chars"):
        load_text_corpus(tmp_path / "corpus.txt", max_chars=0)


# 5. Hostile input ------------------------------------------------------------------------------


def test_clean_text_rules():
    assert clean_text("", 0, "text", None) == (None, "empty or whitespace-only")
    assert clean_text("\u200b\ufeff \x00", 0, "text", None) == (None, "empty or whitespace-only")
    assert clean_text("[MASK] [CLS]", 0, "text", None) == (None, "only special-token text")
    assert clean_text("caf\ufffd", 0, "text", None) == (None, "undecodable bytes (not UTF-8)")
    assert clean_text(None, 0, "text", None) == (None, "missing (None)")
    assert clean_text("a\x00b\u202ec", 0, "text", None) == ("abc", None)
    assert clean_text("x" * 50, 0, "text", 10) == ("x" * 10, None)
    assert clean_text("word", 0, "text", None) == ("word", None)
    with pytest.raises(TypeError, match="row 7"):
        clean_text(3.5, 7, "text", None)


def test_unusable_row_is_an_error_naming_the_row(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": ["not", "text"]}\n')
    dataset, _ = load_text_corpus(corpus)
    with pytest.raises(TypeError, match=r"column 'text'.*row 2"):
        list(dataset)


def test_training_on_hostile_corpus_is_finite_and_reports_drops(tiny_bert_dir, tmp_path):
    dataset, dropped = load_text_corpus(HOSTILE)
    rows = [row["text"] for row in dataset]
    assert all(0 < len(text) <= 20_000 for text in rows)
    assert dict(dropped.reasons) == {
        "empty or whitespace-only": 5,
        "only special-token text": 4,
        "undecodable bytes (not UTF-8)": 3,
    }
    dataset, dropped = load_text_corpus(HOSTILE)
    trainer, _ = train_on_stream(tiny_bert_dir, dataset, tmp_path / "out", max_steps=4)
    losses = [
        entry[key]
        for entry in trainer.state.log_history
        for key in ("loss", "encoder_mlm", "decoder_mlm")
        if key in entry
    ]
    assert len(losses) >= 12
    assert all(math.isfinite(value) for value in losses), losses
    assert dropped.total >= 12  # every pass over the stream counts its drops again
    assert set(dropped.reasons) == {
        "empty or whitespace-only",
        "only special-token text",
        "undecodable bytes (not UTF-8)",
    }


def test_long_lines_are_cut_before_tokenisation(tiny_model):
    text, _ = clean_text(" ".join(["long"] * 25_000), 0, "text", 20_000)
    features = tiny_model.preprocess([text])
    assert features["input_ids"].shape[1] == tiny_model.max_seq_length


# 2. Interruption -------------------------------------------------------------------------------


def test_sigkill_while_saving_resumes_from_last_complete_checkpoint(tiny_bert_dir, sample_texts, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.distributed.kill_during_save",
            str(tiny_bert_dir),
            str(output),
            "6",
            "2",
            "4",
        ],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    while not (output / "hanging").exists():
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the child never reached the checkpoint save"
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()

    partial, complete = output / "checkpoint-4", output / "checkpoint-2"
    assert (partial / "model.safetensors").is_file() and (partial / "trainer_state.json").is_file()
    assert not (partial / LOSS_STATE_DIR / COMPLETE_MARKER).exists()
    assert not is_complete_checkpoint(str(partial)) and is_complete_checkpoint(str(complete))
    assert last_complete_checkpoint(str(output)) == str(complete)

    texts = sample_texts[:96]
    refused, _, _ = make_trainer(tiny_bert_dir, texts, output, max_steps=6, save_steps=2)
    with pytest.raises(ValueError, match="checkpoint-4 is incomplete"):
        refused.train(resume_from_checkpoint=True)  # transformers' get_last_checkpoint picks the partial one

    full, _, _ = make_trainer(tiny_bert_dir, texts, tmp_path / "full", max_steps=6)
    full.train()
    resumed, _, _ = make_trainer(tiny_bert_dir, texts, output, max_steps=6, save_steps=2)
    resumed.train(resume_from_checkpoint=last_complete_checkpoint(str(output)))
    expected = {step: terms for step, *terms in logged_terms(full)}
    got = {step: terms for step, *terms in logged_terms(resumed) if step > 2}
    assert sorted(got) == [3, 4, 5, 6]
    for step, terms in got.items():
        assert terms == pytest.approx(expected[step], abs=1e-4), step


def test_resume_restores_the_masking_generator(tiny_model, sample_texts, tmp_path):
    loss = RetroMAELoss(tiny_model)
    generator = loss.mask_generator(torch.device("cpu"))
    torch.rand(5, generator=generator)
    loss.save_training_state(str(tmp_path))
    expected = torch.rand(5, generator=generator)
    other = RetroMAELoss(tiny_model)
    other.load_training_state(str(tmp_path))
    assert torch.equal(torch.rand(5, generator=other.mask_generator(torch.device("cpu"))), expected)
    assert not list((tmp_path / LOSS_STATE_DIR).glob("*.tmp-*")), "a temporary file was left behind"


# 4. Mixed precision ----------------------------------------------------------------------------


def test_bf16_autocast_on_cpu_stays_close_to_fp32(tiny_model, sample_texts):
    loss = RetroMAELoss(tiny_model).eval()
    features = dict(tiny_model.preprocess(sample_texts[:16]))
    masks = loss.make_masks(features, torch.Generator().manual_seed(0))
    fp32 = loss.compute_loss_terms(features, masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = loss.compute_loss_terms(features, masks)
        total = sum(bf16.values())
    total.backward()
    for key in fp32:
        assert torch.isfinite(bf16[key])
        assert bf16[key].item() == pytest.approx(fp32[key].item(), rel=2e-2), key
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in loss.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs a CUDA device")
def test_fp16_autocast_on_gpu_stays_close_to_fp32(tiny_model, sample_texts):
    loss = RetroMAELoss(tiny_model).to("cuda").eval()
    features = {
        k: v.to("cuda") if isinstance(v, torch.Tensor) else v
        for k, v in tiny_model.preprocess(sample_texts[:16]).items()
    }
    masks = loss.make_masks(features, torch.Generator("cuda").manual_seed(0))
    fp32 = loss.compute_loss_terms(features, masks)
    with torch.autocast("cuda", dtype=torch.float16):
        fp16 = loss.compute_loss_terms(features, masks)
    for key in fp32:
        assert fp16[key].item() == pytest.approx(fp32[key].item(), rel=2e-2), key


# 6. Safe formats -------------------------------------------------------------------------------


def test_package_never_unpickles_or_trusts_remote_code():
    for path in (REPO_ROOT / "retromae_st").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle"} & set(names), f"{path}: imports {names}"
            if not isinstance(node, ast.Call):
                continue
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            trust = keywords.get("trust_remote_code")
            assert not (isinstance(trust, ast.Constant) and trust.value is True), f"{path}:{node.lineno}"
            if ast.unparse(node.func) == "torch.load":
                only = keywords.get("weights_only")
                assert isinstance(only, ast.Constant) and only.value is True, f"{path}:{node.lineno}"


def test_saved_weights_are_safetensors_only(tiny_bert_dir, sample_texts, tmp_path):
    trainer, model, _ = make_trainer(
        tiny_bert_dir, sample_texts[:32], tmp_path / "out", max_steps=2, save_steps=2
    )
    trainer.train()
    model.save(str(tmp_path / "final"))
    for folder in (tmp_path / "final", tmp_path / "out" / "checkpoint-2"):
        # training_args.bin is the trainer's pickled arguments (not weights); nothing here loads it.
        weights = [
            p
            for p in folder.rglob("*")
            if p.suffix in {".bin", ".safetensors", ".pkl", ".pickle"} and p.name != "training_args.bin"
        ]
        assert weights and all(p.suffix == ".safetensors" for p in weights), weights
    # What remains as torch files are the trainer's optimizer/scheduler/RNG states, which transformers
    # loads with torch.load(weights_only=True).
    torch_files = {p.name for p in (tmp_path / "out" / "checkpoint-2").glob("*.pt*")}
    assert torch_files <= {"optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"}, torch_files


@pytest.mark.slow
def test_streaming_2000_steps_keeps_memory_flat():
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "streaming_memory.py"), "--steps", "2000"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        check=True,
    )
    ratio = float(re.search(r"growth after warm-up / corpus size = ([-+0-9.]+)", completed.stdout).group(1))
    assert ratio < 0.1, completed.stdout
