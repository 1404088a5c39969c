"""Every folder we save has a model card naming the losses with their citations, the data, the hyperparameters
and the training logs, and a usage snippet that, cut out of the card and run, loads that folder and embeds."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from retromae_st import (
    DupMAELoss,
    RetroMAEContrastiveLoss,
    RetroMAELoss,
    build_dupmae_model,
    load_cls_model,
    load_dupmae_model,
)
from retromae_st.data import prepare_text_dataset
from retromae_st.model_card import RetroMAEModelCardData, name_training_data
from retromae_st.pretraining import pretrain
from tests.conftest import SAMPLE_CORPUS

RETROMAE_BIBTEX = "@inproceedings{xiao2022retromae,"
DUPMAE_BIBTEX = "@inproceedings{xiao2023retromae2,"
UNIFIED_BIBTEX = "@misc{liu2022maeunified,"


def train(model, loss, dataset, output_dir: Path, **overrides) -> None:
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=3e-4,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        **overrides,
    )
    SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()


def read_card(folder: Path) -> str:
    return (folder / "README.md").read_text(encoding="utf-8")


def usage_snippet(card: str) -> str:
    match = re.search(r"Then you can load this model and run inference\.\n```python\n(.*?)\n```", card, re.S)
    assert match, "the card has no usage snippet"
    return match.group(1)


def run_usage_snippet(card: str) -> dict:
    namespace: dict = {}
    exec(usage_snippet(card), namespace)  # noqa: S102 - the card's own snippet is what is tested
    return namespace


def assert_describes_training(
    card: str, loss_name: str, bibtex: list[str], terms: list[str], data_name: str = "Unnamed Dataset"
) -> None:
    assert re.search(rf"\* Loss: <code>retromae_st\.[\w.]+\.{loss_name}</code> with these parameters", card)
    for entry in bibtex:
        assert entry in card, entry
    data = card.split("### Training Dataset", 1)[1].split("### Training Hyperparameters", 1)[0]
    assert f"#### {data_name}" in data and "* Columns: <code>" in data  # the data
    assert "- `learning_rate`: 0.0003" in card and "- `max_steps`: 2" in card  # the hyperparameters
    logs = card.split("### Training Logs", 1)[1].split("###", 1)[0]
    header, _, *rows = [line for line in logs.splitlines() if line.startswith("|")]
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "Epoch",
        "Step",
        "Training Loss",
        *terms,
    ]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]
    assert all(
        re.fullmatch(r"\d+\.\d+", cell.strip()) for row in rows for cell in row.strip("|").split("|")[2:]
    )


def text_dataset(texts: list[str]) -> Dataset:
    return prepare_text_dataset(Dataset.from_dict({"text": texts[:16]}))[0]


def test_retromae_cls_folder_card(tiny_bert_dir, sample_texts, tmp_path):
    torch.manual_seed(0)
    model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    train(model, RetroMAELoss(model), text_dataset(sample_texts), tmp_path / "run")
    model.save(str(tmp_path / "cls"))
    card = read_card(tmp_path / "cls")
    assert_describes_training(card, "RetroMAELoss", [RETROMAE_BIBTEX], ["encoder_mlm", "decoder_mlm"])
    assert "* Size: 16 training samples" in card
    namespace = run_usage_snippet(card)
    assert "SentenceTransformer(" in usage_snippet(card)
    assert namespace["embeddings"].shape == (3, 64)
    expected = model.encode(namespace["sentences"])
    assert torch.allclose(torch.tensor(namespace["embeddings"]), torch.tensor(expected), atol=1e-6)


def test_dupmae_folder_card_carries_the_training_card_and_loads_with_its_snippet(
    tiny_bert_dir, sample_texts, tmp_path
):
    torch.manual_seed(0)
    model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    loss = DupMAELoss(model)
    train(model, loss, text_dataset(sample_texts), tmp_path / "run")
    dupmae = build_dupmae_model(loss, top_k=8)
    dupmae.save(str(tmp_path / "dupmae"))
    card = read_card(tmp_path / "dupmae")
    assert_describes_training(
        card, "DupMAELoss", [DUPMAE_BIBTEX, RETROMAE_BIBTEX], ["encoder_mlm", "decoder_mlm", "bow"]
    )
    assert card.count(DUPMAE_BIBTEX) == 1 and "* Size: 16 training samples" in card
    assert "load_dupmae_model(" in usage_snippet(card)
    namespace = run_usage_snippet(card)
    assert namespace["embeddings"].shape == (3, dupmae.get_embedding_dimension())
    expected = dupmae.encode(namespace["sentences"])
    assert torch.allclose(torch.tensor(namespace["embeddings"]), torch.tensor(expected), atol=1e-5)
    # The training model's own card is not changed by building the DupMAE one.
    assert model.model_card_data.model is model


def test_stage2_folder_card(tiny_bert_dir, sample_texts, tmp_path):
    torch.manual_seed(0)
    model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    mae = RetroMAELoss(model)
    queries = [" ".join(text.split()[:4]) for text in sample_texts[:16]]
    datasets = DatasetDict(
        {
            "msmarco": Dataset.from_dict({"query": queries, "passage": sample_texts[:16]}),
            "nli": Dataset.from_dict({"anchor": sample_texts[16:32], "positive": sample_texts[32:48]}),
        }
    )
    loss = {
        "msmarco": RetroMAEContrastiveLoss(model, mae, mae_columns="documents"),
        "nli": RetroMAEContrastiveLoss(model, mae),
    }
    train(model, loss, datasets, tmp_path / "run", dataloader_drop_last=True)
    model.save(str(tmp_path / "stage2"))
    card = read_card(tmp_path / "stage2")
    assert_describes_training(
        card,
        "RetroMAEContrastiveLoss",
        [UNIFIED_BIBTEX, RETROMAE_BIBTEX],
        ["encoder_mlm", "decoder_mlm", "contrastive"],
        data_name="msmarco",
    )
    assert "#### nli" in card and card.count("* Size: 16 training samples") == 2
    namespace = run_usage_snippet(card)
    embeddings = [value for name, value in namespace.items() if name.endswith("embeddings")]
    assert embeddings and all(value.shape[-1] == 64 for value in embeddings)


def test_pretrain_writes_a_card_into_final(tiny_bert_dir, tmp_path):
    result = pretrain(
        str(tiny_bert_dir),
        str(SAMPLE_CORPUS),
        str(tmp_path / "out"),
        max_steps=2,
        batch_size=4,
        max_seq_length=32,
        learning_rate=3e-4,
    )
    card = read_card(Path(result.sentence_transformer_dir))
    assert_describes_training(
        card, "RetroMAELoss", [RETROMAE_BIBTEX], ["encoder_mlm", "decoder_mlm"], data_name=SAMPLE_CORPUS.name
    )
    assert run_usage_snippet(card)["embeddings"].shape == (3, 64)


def test_a_reloaded_dupmae_folder_keeps_the_working_snippet_when_saved_again(tiny_model, tmp_path):
    build_dupmae_model(DupMAELoss(tiny_model), top_k=8).save(str(tmp_path / "dupmae"))
    reloaded = load_dupmae_model(str(tmp_path / "dupmae"))
    assert isinstance(reloaded.model_card_data, RetroMAEModelCardData)
    reloaded.model_card_data.add_tags("generated_from_trainer")  # as after more training: a new card
    reloaded.save(str(tmp_path / "again"))
    namespace = run_usage_snippet(read_card(tmp_path / "again"))
    assert namespace["embeddings"].shape == (3, reloaded.get_embedding_dimension())


def test_training_data_is_named_by_its_files(tiny_model):
    name_training_data(tiny_model, ["data/part-000.txt", Path("more/part-001.jsonl"), "wiki_folder/"])
    assert tiny_model.model_card_data.train_datasets == [
        {"name": "part-000.txt, part-001.jsonl, wiki_folder"}
    ]
    tiny_model.model_card_data.train_datasets = []
    name_training_data(tiny_model, Dataset.from_dict({"text": ["a"]}))
    assert tiny_model.model_card_data.train_datasets == []
