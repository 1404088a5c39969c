"""retromae-st: RetroMAE-family retrieval-oriented pre-training as sentence-transformers losses."""

from retromae_st.checkpointing import LossStateCallback, last_complete_checkpoint
from retromae_st.data import load_text_corpus
from retromae_st.decoder import EnhancedDecoderLayer
from retromae_st.dupmae_loss import DupMAELoss, build_dupmae_model
from retromae_st.dupmae_pooling import DupMAEPooling, load_dupmae_model
from retromae_st.dupmae_search import DupMAERetriever
from retromae_st.export import load_cls_model, save_as_masked_lm
from retromae_st.length_grouped_sampler import LengthGroupedBatchSampler
from retromae_st.packing import PackingStats, pack_corpus
from retromae_st.retromae_contrastive_loss import RetroMAEContrastiveLoss
from retromae_st.retromae_loss import RetroMAELoss

__version__ = "0.1.0"

__all__ = [
    "DupMAELoss",
    "DupMAEPooling",
    "DupMAERetriever",
    "build_dupmae_model",
    "load_dupmae_model",
    "EnhancedDecoderLayer",
    "LengthGroupedBatchSampler",
    "LossStateCallback",
    "PackingStats",
    "RetroMAEContrastiveLoss",
    "RetroMAELoss",
    "last_complete_checkpoint",
    "load_cls_model",
    "load_text_corpus",
    "pack_corpus",
    "save_as_masked_lm",
]
