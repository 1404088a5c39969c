"""Moving between sentence-transformers folders and masked-LM checkpoints.

- :func:`load_cls_model` turns any supported checkpoint (a RetroMAE/DupMAE release such as
  ``Shitao/RetroMAE``, a ``*ForMaskedLM`` folder written by :func:`save_as_masked_lm`, or a plain
  model) into a SentenceTransformer that embeds with the final ``[CLS]`` state, as RetroMAE does.
- :func:`save_as_masked_lm` writes the encoder together with the loss's MLM head as a standard
  ``*ForMaskedLM`` folder of its family (``BertForMaskedLM`` is the layout the authors publish), with
  the trained decoder beside it: the start of a later stage of pre-training (``RetroMAELoss`` picks
  the head and the decoder up again).
"""

from __future__ import annotations

import os
from contextlib import nullcontext

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from torch import nn
from transformers import AutoModelForMaskedLM

from retromae_st.checkpointing import unwrap_model
from retromae_st.decoder import save_decoder
from retromae_st.load_report import expected_masked_lm_differences
from retromae_st.mlm_head import checkpoint_head_state
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
    """Saves the encoder with ``loss``'s MLM head in the family's own ``*ForMaskedLM`` layout, plus the
    trained decoder beside it (safetensors + tokenizer + ``retromae_decoder.safetensors`` /
    ``retromae_decoder_config.json``).

    The folder loads with ``AutoModelForMaskedLM.from_pretrained`` (``BertForMaskedLM``,
    ``RobertaForMaskedLM``, ``XLMRobertaForMaskedLM``, ``ModernBertForMaskedLM``, ...), with
    :func:`load_cls_model` for embedding, and as the starting checkpoint of a new :class:`RetroMAELoss` /
    :class:`retromae_st.DupMAELoss`, which then starts from the saved head and decoder.
    """
    transformer = unwrap_model(model)[0]
    encoder = transformer.auto_model
    model_type = encoder.config.model_type
    try:
        masked_lm = AutoModelForMaskedLM.from_config(encoder.config)
    except ValueError as error:
        raise ValueError(
            f"save_as_masked_lm: transformers has no *ForMaskedLM class for {model_type!r}"
        ) from error
    encoder_state = {
        key: value for key, value in encoder.state_dict().items() if not key.startswith("pooler.")
    }
    missing, unexpected = masked_lm.base_model.load_state_dict(encoder_state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"The encoder does not fit {type(masked_lm).__name__}: missing {missing}, unexpected {unexpected}"
        )
    prefix = f"{masked_lm.base_model_prefix}."
    head_state = checkpoint_head_state(loss.mlm_head, model_type)
    missing, unexpected = masked_lm.load_state_dict(head_state, strict=False)
    missing = [key for key in missing if not key.startswith(prefix) and key not in _tied_keys(masked_lm)]
    if missing or unexpected:
        raise ValueError(
            f"The MLM head does not fit {type(masked_lm).__name__}: missing {missing}, unexpected {unexpected}"
        )
    masked_lm.tie_weights()
    os.makedirs(output_dir, exist_ok=True)
    masked_lm.save_pretrained(output_dir)
    transformer.tokenizer.save_pretrained(output_dir)
    save_decoder(loss.decoder, output_dir, type(loss).__name__)


def _tied_keys(masked_lm: nn.Module) -> set[str]:
    """Names of ``masked_lm``'s tensors that are tied to another one (filled by ``tie_weights``)."""
    tied = getattr(masked_lm, "_tied_weights_keys", None) or {}
    return set(tied) if isinstance(tied, dict) else set(tied)
