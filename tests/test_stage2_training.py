"""RetroMAEContrastiveLoss in SentenceTransformerTrainer: multi-dataset runs, checkpoints, the two-stage recipe."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)

from retromae_st import RetroMAEContrastiveLoss, RetroMAELoss, load_cls_model
from retromae_st.checkpointing import LOSS_STATE_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]


def stage2_datasets(texts: list[str]) -> DatasetDict:
    queries = [" ".join(text.split()[:4]) for text in texts[:24]]
    return DatasetDict(
        {
            "msmarco": Dataset.from_dict({"query": queries, "passage": texts[:24]}),
            "nli": Dataset.from_dict(
                {"anchor": texts[24:48], "positive": texts[48:72], "negative": texts[72:96]}
            ),
        }
    )


def test_multi_dataset_training_logs_terms_and_checkpoints_shared_decoder(
    tiny_bert_dir, sample_texts, tmp_path
):
    torch.manual_seed(0)
    model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    mae = RetroMAELoss(model)
    loss = {
        "msmarco": RetroMAEContrastiveLoss(model, mae, mae_columns="documents"),
        "nli": RetroMAEContrastiveLoss(model, mae),
    }
    before = mae.decoder.query.weight.detach().clone()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=2,
        save_strategy="steps",
        save_steps=4,
        report_to="none",
        dataloader_drop_last=True,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=stage2_datasets(sample_texts), loss=loss
    )
    trainer.train()

    assert not torch.equal(mae.decoder.query.weight, before), "the shared decoder was not optimised"
    logged = [entry for entry in trainer.state.log_history if "contrastive" in entry]
    assert logged and all({"encoder_mlm", "decoder_mlm"} <= set(entry) for entry in logged)
    assert all(torch.isfinite(torch.tensor(entry["contrastive"])) for entry in logged)

    checkpoint = tmp_path / "run" / "checkpoint-4"
    for name in ("msmarco", "nli"):
        assert (checkpoint / LOSS_STATE_DIR / f"{name}.safetensors").is_file(), name
    fresh_model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    fresh = RetroMAEContrastiveLoss(fresh_model)
    fresh.load_training_state(str(checkpoint), "nli")
    for key, tensor in loss["nli"].training_state_dict().items():
        assert torch.equal(fresh.training_state_dict()[key], tensor), key


def write_mini_shared_data(root: Path, texts: list[str]) -> Path:
    """The layout of ../shared/data with a few rows each, so the recipe runs in seconds."""
    (root / "corpus").mkdir(parents=True)
    (root / "corpus" / "corpus.txt").write_text("\n".join(texts[:64]) + "\n", encoding="utf-8")
    (root / "nli").mkdir()
    with open(root / "nli" / "snli_devtest_triplets.tsv", "w", encoding="utf-8") as handle:
        handle.write("anchor\tpositive\tnegative\n")
        for i in range(16):
            handle.write(f"{texts[i]}\t{texts[i][: len(texts[i]) // 2]}\t{texts[40 + i]}\n")
    for name, offset in (("msmarco-5k", 0), ("dbpedia-entity-5k", 20)):
        folder = root / "beir_subsets" / name
        (folder / "qrels").mkdir(parents=True)
        docs = [{"_id": f"d{i}", "title": "", "text": texts[offset + i]} for i in range(20)]
        queries = [{"_id": f"q{i}", "text": " ".join(texts[offset + i].split()[:3])} for i in range(8)]
        (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs), encoding="utf-8")
        (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries), encoding="utf-8")
        with open(folder / "qrels" / "test.tsv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerow(["query-id", "corpus-id", "score"])
            writer.writerows([f"q{i}", f"d{i}", 2] for i in range(8))
    (root / "stsb").mkdir()
    with open(root / "stsb" / "sts-dev.csv", "w", encoding="utf-8") as handle:
        for i in range(10):
            handle.write(f"main\tx\t2012\t{i:04d}\t{i % 6}.000\t{texts[i]}\t{texts[i + 1]}\n")
    return root


def load_recipe():
    spec = importlib.util.spec_from_file_location("two_stage", REPO_ROOT / "examples" / "two_stage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_two_stage_recipe_end_to_end_saves_plain_st_models(tiny_bert_dir, sample_texts, tmp_path, capsys):
    data = write_mini_shared_data(tmp_path / "data", sample_texts)
    recipe = load_recipe()
    rows = recipe.main(
        [
            *("--model", str(tiny_bert_dir), "--data", str(data), "--output", str(tmp_path / "out")),
            *("--stage1-steps", "2", "--stage2-steps", "2", "--batch-size", "4", "--max-seq-length", "32"),
        ]
    )
    assert list(rows) == ["start (CLS pooling)", "stage 1: RetroMAE", "stage 2: + contrastive"]
    assert all(-100 <= value <= 100 for row in rows.values() for value in row.values())
    assert "| stage 2: + contrastive |" in capsys.readouterr().out

    for stage in ("stage1", "stage2"):
        path = tmp_path / "out" / stage
        modules = json.loads((path / "modules.json").read_text())
        assert all("retromae_st" not in module["type"] for module in modules), stage
        reloaded = SentenceTransformer(str(path), device="cpu")
        assert reloaded[1].pooling_mode == "cls"
        assert reloaded.encode(["a short test sentence"]).shape == (1, 64)
    # Stage 2 continued from stage 1: its weights moved away from the stage-1 export.
    stage1 = SentenceTransformer(str(tmp_path / "out" / "stage1"), device="cpu")
    stage2 = SentenceTransformer(str(tmp_path / "out" / "stage2"), device="cpu")
    assert not torch.allclose(
        torch.tensor(stage1.encode(["some text"])), torch.tensor(stage2.encode(["some text"])), atol=1e-6
    )


def test_last_batch_of_one_row_fails_on_the_first_step(tiny_bert_dir, sample_texts, tmp_path):
    model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    loss = {"nli": RetroMAEContrastiveLoss(model, mae_weight=0.0)}
    data = DatasetDict({"nli": stage2_datasets(sample_texts)["nli"].select(range(9))})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=1,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    before = model[0].auto_model.encoder.layer[0].output.dense.weight.detach().clone()
    with pytest.raises(ValueError, match="dataset 'nli' has 9 rows.*single row.*dataloader_drop_last=True"):
        trainer.train()
    assert torch.equal(model[0].auto_model.encoder.layer[0].output.dense.weight, before), (
        "trained before failing"
    )
