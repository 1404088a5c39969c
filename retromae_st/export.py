"""Moving between sentence-transformers folders and masked-LM checkpoints.

- :func:`load_cls_model` turns any BERT-family checkpoint (a RetroMAE/DupMAE release such as
  ``Shitao/RetroMAE``, a ``BertForMaskedLM`` folder written by :func:`save_as_masked_lm`, or a plain
  model) into a SentenceTransformer that embeds with the final ``[CLS]`` state, as RetroMAE does.
- :func:`save_as_masked_lm` writes the encoder together with the loss's MLM head as a standard
  ``BertForMaskedLM`` folder: the layout the authors publish, and the start of a later stage of
  pre-training (``RetroMAELoss`` picks the head up again).
"""

from __future__ import annotations

import os
from contextlib import nullcontext

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from transformers import BertForMaskedLM

from retromae_st.checkpointing import unwrap_model
from retromae_st.load_report import expected_masked_lm_differences
from retromae_st.model_card import RetroMAEModelCardData
from retromae_st.model_location import model_location, naming_hub_failures
from retromae_st.retromae_loss import RetroMAELoss


def load_cls_model(
    model_name_or_path: str,
    max_seq_length: int | None = None,
    device: str | None = None,
    **model_kwargs,
) -> SentenceTransformer:
    """A SentenceTransformer of ``Transformer(model_name_or_path)`` + ``Pooling(pooling_mode="cls")``.

    Args:
        model_name_or_path: A local folder (a Hugging Face checkpoint, e.g. ``BertForMaskedLM``, or the
            root of a sentence-transformers folder) or, where a hub is reachable, a hub id.
        max_seq_length: Truncation length; defaults to the checkpoint's own.
        device: Device to put the model on.
        model_kwargs: Passed on to ``transformers`` ``from_pretrained`` (e.g. ``torch_dtype``).

    Returns:
        The model; ``model.save(path)`` gives a plain sentence-transformers folder.
    """
    if not isinstance(model_name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"model_name_or_path must be a path or hub id, got {type(model_name_or_path).__name__}"
        )
    model_name_or_path = os.fspath(model_name_or_path)
    from_hub = model_location(model_name_or_path) == "hub"
    hub_failures = naming_hub_failures(model_name_or_path) if from_hub else nullcontext()
    with hub_failures, expected_masked_lm_differences():
        transformer = Transformer(
            model_name_or_path, max_seq_length=max_seq_length, model_kwargs=model_kwargs or None
        )
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    return SentenceTransformer(
        modules=[transformer, pooling], device=device, model_card_data=RetroMAEModelCardData()
    )


def save_as_masked_lm(model: SentenceTransformer, loss: RetroMAELoss, output_dir: str) -> None:
    """Saves the encoder with ``loss``'s MLM head as a ``BertForMaskedLM`` folder (safetensors + tokenizer).

    The folder loads with ``BertForMaskedLM.from_pretrained``, with :func:`load_cls_model` for
    embedding, and as the starting checkpoint of a new :class:`RetroMAELoss` (which then reuses the
    head). Only BERT-layout encoders can be written this way.
    """
    transformer = unwrap_model(model)[0]
    encoder = transformer.auto_model
    if encoder.config.model_type != "bert":
        raise ValueError(
            f"save_as_masked_lm writes the BertForMaskedLM layout; this encoder is {encoder.config.model_type!r}"
        )
    masked_lm = BertForMaskedLM(encoder.config)
    encoder_state = {
        key: value for key, value in encoder.state_dict().items() if not key.startswith("pooler.")
    }
    masked_lm.bert.load_state_dict(encoder_state, strict=True)
    head_state = {
        key: value for key, value in loss.mlm_head.state_dict().items() if key != "predictions.decoder.weight"
    }
    missing, unexpected = masked_lm.cls.load_state_dict(head_state, strict=False)
    if unexpected or [key for key in missing if key != "predictions.decoder.weight"]:
        raise ValueError(f"MLM head does not fit BertForMaskedLM: missing {missing}, unexpected {unexpected}")
    masked_lm.tie_weights()
    os.makedirs(output_dir, exist_ok=True)
    masked_lm.save_pretrained(output_dir)
    transformer.tokenizer.save_pretrained(output_dir)
