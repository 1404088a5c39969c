"""Namespaced hub ids (``org/name``) go to the hub loaders; missing local paths are a clear error.

The hub is unreachable here, so a published model is served from a Hugging Face cache in ``tmp_path``
(the layout ``huggingface_hub`` writes: ``models--org--name/refs/main`` + ``snapshots/<commit>/``), read in
offline mode exactly as a user's cached download would be.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from retromae_st import load_cls_model
from retromae_st.cli import load_model, main
from retromae_st.model_location import model_location
from tests.conftest import SAMPLE_CORPUS, build_tiny_bert


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """``publish(folder, "org/name")`` puts ``folder`` into an offline hub cache as the repository ``org/name``."""
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def publish(folder: Path, repo_id: str) -> None:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        commit = "0123456789abcdef0123456789abcdef01234567"
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)

    return publish


def test_load_cls_model_loads_a_namespaced_hub_id(hub_cache, tmp_path, tokenizer, sample_texts):
    hub_cache(build_tiny_bert(tmp_path / "tiny", tokenizer), "someorg/tiny-bert")
    local = load_cls_model(str(tmp_path / "tiny"))
    from_hub = load_cls_model("someorg/tiny-bert")
    assert (from_hub.encode(sample_texts[:2]) == local.encode(sample_texts[:2])).all()


def test_eval_load_model_loads_a_namespaced_hub_id(hub_cache, tmp_path, tiny_model, sample_texts):
    tiny_model.save(str(tmp_path / "st"))
    hub_cache(tmp_path / "st", "someorg/tiny-st")
    model = load_model("someorg/tiny-st", max_seq_length=32)
    assert model.max_seq_length == 32
    assert model.encode(sample_texts[:2]).shape == (2, tiny_model.get_embedding_dimension())


@pytest.mark.parametrize("loader", [load_cls_model, load_model])
def test_unreachable_hub_id_is_passed_to_the_hub_and_its_failure_names_the_id(hub_cache, loader):
    with pytest.raises(FileNotFoundError, match=r"'Shitao/RetroMAE' is not a local folder.*hub id") as caught:
        loader("Shitao/RetroMAE")
    assert isinstance(caught.value.__cause__, OSError)  # what transformers / ST answered
    assert "huggingface.co" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("./missing-model", "relative or absolute path"),
        ("/no/such/model", "relative or absolute path"),
        ("runs/deep/final", "not a Hugging Face hub id"),
        ("bad name!", "not a Hugging Face hub id"),
        ("outputs/final", "'outputs' is a local folder"),
        ("model.txt", "is a file, not a folder"),
    ],
)
def test_missing_local_paths_are_refused_up_front(tmp_path, monkeypatch, name, reason):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "model.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match=f"model folder not found: '{name}'.*{reason}"):
        model_location(name)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_cls_model(name)


def test_hub_ids_and_existing_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    assert model_location("Shitao/RetroMAE") == "hub"
    assert model_location("bert-base-uncased") == "hub"
    assert model_location("org") == "local"
    assert model_location(str(tmp_path)) == "local"


def test_cli_pretrain_and_eval_pass_namespaced_ids_to_the_hub(hub_cache, tmp_path, capsys):
    args = ["--corpus", str(SAMPLE_CORPUS), "--output", str(tmp_path / "out")]
    assert main(["pretrain", "--model", "nobody/no-such-model", *args]) == 2
    error = capsys.readouterr().err
    assert "'nobody/no-such-model' is not a local folder" in error and "hub" in error
    # eval checks its data before it loads the model: give it a valid STS-B file, so the model is reached
    sts = tmp_path / "pairs.tsv"
    rows = ["sentence1\tsentence2\tscore", *(f"sentence {i}\tother {i}\t{i}.0" for i in range(5))]
    sts.write_text("\n".join(rows) + "\n", encoding="utf-8")
    eval_args = ["--data", str(sts), "--output", str(tmp_path / "eval")]
    assert main(["eval", "sts", "--model", "nobody/no-such-model", *eval_args]) == 2
    error = capsys.readouterr().err
    assert "'nobody/no-such-model' is not a local folder" in error and "hub" in error
    assert main(["eval", "sts", "--model", str(tmp_path / "no-model"), *eval_args]) == 2
    assert "model folder not found" in capsys.readouterr().err
