"""retromae-st: RetroMAE-family retrieval-oriented pre-training as sentence-transformers losses."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> module defining it. Imported on first use (PEP 562), so that ``retromae-st --help``
#: and ``import retromae_st.<light module>`` do not pay for importing torch and transformers.
_EXPORTS = {
    "DupMAELoss": "retromae_st.dupmae_loss",
    "DupMAEPooling": "retromae_st.dupmae_pooling",
    "DupMAERetriever": "retromae_st.dupmae_search",
    "EnhancedDecoderLayer": "retromae_st.decoder",
    "LengthGroupedBatchSampler": "retromae_st.length_grouped_sampler",
    "LossStateCallback": "retromae_st.checkpointing",
    "RetroMAEContrastiveLoss": "retromae_st.retromae_contrastive_loss",
    "RetroMAELoss": "retromae_st.retromae_loss",
    "build_dupmae_model": "retromae_st.dupmae_loss",
    "last_complete_checkpoint": "retromae_st.checkpointing",
    "load_cls_model": "retromae_st.export",
    "load_dupmae_model": "retromae_st.dupmae_pooling",
    "load_text_corpus": "retromae_st.data",
    "pack_corpus": "retromae_st.packing",
    "PackingStats": "retromae_st.packing",
    "pretrain": "retromae_st.pretraining",
    "save_as_masked_lm": "retromae_st.export",
    "stage2": "retromae_st.pretraining",
    "stream_corpus": "retromae_st.corpora",
}

__all__ = [
    "DupMAELoss",
    "DupMAEPooling",
    "DupMAERetriever",
    "EnhancedDecoderLayer",
    "LengthGroupedBatchSampler",
    "LossStateCallback",
    "PackingStats",
    "RetroMAEContrastiveLoss",
    "RetroMAELoss",
    "build_dupmae_model",
    "last_complete_checkpoint",
    "load_cls_model",
    "load_dupmae_model",
    "load_text_corpus",
    "pack_corpus",
    "pretrain",
    "save_as_masked_lm",
    "stage2",
    "stream_corpus",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retromae_st' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from retromae_st.checkpointing import LossStateCallback, last_complete_checkpoint
    from retromae_st.corpora import stream_corpus
    from retromae_st.data import load_text_corpus
    from retromae_st.decoder import EnhancedDecoderLayer
    from retromae_st.dupmae_loss import DupMAELoss, build_dupmae_model
    from retromae_st.dupmae_pooling import DupMAEPooling, load_dupmae_model
    from retromae_st.dupmae_search import DupMAERetriever
    from retromae_st.export import load_cls_model, save_as_masked_lm
    from retromae_st.length_grouped_sampler import LengthGroupedBatchSampler
    from retromae_st.packing import PackingStats, pack_corpus
    from retromae_st.pretraining import pretrain, stage2
    from retromae_st.retromae_contrastive_loss import RetroMAEContrastiveLoss
    from retromae_st.retromae_loss import RetroMAELoss
