"""The masked-language-model head shared by the encoder and the decoder.

RetroMAE predicts tokens with the encoder checkpoint's own MLM head (``BertForMaskedLM.cls``), whose
output projection is tied to the word embeddings. A sentence-transformers folder holds only the
``BertModel``, so the head is read from the checkpoint's weight files when they have one, and is
otherwise freshly initialised (and still tied).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import PretrainedConfig
from transformers.models.bert.modeling_bert import BertOnlyMLMHead

from retromae_st.decoder import init_like_bert
from retromae_st.fused_cross_entropy import ignored_mean_cross_entropy, linear_cross_entropy

logger = logging.getLogger(__name__)

HEAD_PREFIX = "cls."
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _resolve_weight_file(name_or_path: str, filename: str) -> str | None:
    """Local path of ``filename`` in a folder or (when a hub is reachable or cached) a hub repository."""
    local = os.path.join(name_or_path, filename)
    if os.path.isdir(name_or_path):
        return local if os.path.isfile(local) else None
    try:
        from transformers.utils import cached_file

        return cached_file(
            name_or_path,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError):
        return None


def _read_tensors(path: str, prefix: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        with safe_open(path, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefix)}
    # Never unpickle arbitrary objects from a checkpoint: tensors only.
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value for key, value in state.items() if key.startswith(prefix)}


def pretrained_head_state(name_or_path: str | None) -> dict[str, torch.Tensor]:
    """The ``cls.*`` tensors of a ``BertForMaskedLM``-layout checkpoint, without the ``cls.`` prefix.

    Returns an empty dict when the checkpoint has no MLM head (e.g. a plain ``BertModel``).
    """
    if not name_or_path:
        return {}
    for filename in _WEIGHT_FILES:
        path = _resolve_weight_file(name_or_path, filename)
        if path is None:
            continue
        if filename.endswith(".index.json"):
            with open(path) as handle:
                shards = sorted(
                    {
                        shard
                        for key, shard in json.load(handle)["weight_map"].items()
                        if key.startswith(HEAD_PREFIX)
                    }
                )
            tensors = {}
            for shard in shards:
                shard_path = _resolve_weight_file(name_or_path, shard)
                if shard_path is not None:
                    tensors.update(_read_tensors(shard_path, HEAD_PREFIX))
        else:
            tensors = _read_tensors(path, HEAD_PREFIX)
        return {key[len(HEAD_PREFIX) :]: value for key, value in tensors.items()}
    return {}


def tie_to_embeddings(head: BertOnlyMLMHead, word_embeddings: nn.Embedding) -> None:
    """Shares the head's output projection with the word embeddings, as ``BertForMaskedLM`` does."""
    head.predictions.decoder.weight = word_embeddings.weight
    head.predictions.decoder.bias = head.predictions.bias


def build_mlm_head(
    config: PretrainedConfig, word_embeddings: nn.Embedding, name_or_path: str | None
) -> BertOnlyMLMHead:
    """The checkpoint's own MLM head when it has one, else a new head; tied to ``word_embeddings`` either way."""
    head = BertOnlyMLMHead(config)
    state = pretrained_head_state(name_or_path)
    if state:
        state.pop("predictions.decoder.weight", None)
        state.setdefault(
            "predictions.bias", state.pop("predictions.decoder.bias", head.predictions.bias.data)
        )
        state.pop("predictions.decoder.bias", None)
        missing, unexpected = head.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.startswith("predictions.decoder.")]
        if missing or unexpected:
            raise ValueError(
                f"The MLM head in {name_or_path!r} does not have the BertForMaskedLM layout: "
                f"missing {missing}, unexpected {unexpected}"
            )
        logger.info("Loaded the pretrained MLM head of %s", name_or_path)
    else:
        init_like_bert(head, getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(head.predictions.bias)
        logger.info(
            "No pretrained MLM head in %s: initialised a new one tied to the word embeddings", name_or_path
        )
    tie_to_embeddings(head, word_embeddings)
    return head


def trainable_head_state(head: BertOnlyMLMHead) -> dict[str, torch.Tensor]:
    """The head's own tensors, without the projection shared with the word embeddings."""
    return {key: value for key, value in head.state_dict().items() if key != "predictions.decoder.weight"}


def masked_lm_loss(
    head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, all_positions: bool = False
) -> torch.Tensor:
    """Mean cross-entropy over the positions that carry a label, computing logits only there.

    Equal to ``cross_entropy(head(hidden).view(-1, V), labels.view(-1))`` (ignore index -100) without
    materialising ``B x L x V`` logits. A batch without any label gives 0 rather than NaN.

    The labelled positions are found with one ``nonzero`` (a host synchronisation on an accelerator:
    the number of labelled positions decides the shapes). ``all_positions=True`` runs the head at every
    position instead and leaves the unlabelled ones out of the mean on the device: no synchronisation,
    the same value, and extra head work in proportion to the unlabelled share (cheap for a term whose
    labels cover nearly every position, as the decoder's do in length-grouped batches).
    """
    if all_positions:
        return _head_cross_entropy(head, hidden.flatten(0, -2), labels.flatten(), ignore=True)
    positions = (labels.flatten() != -100).nonzero().squeeze(1)
    if positions.numel() == 0:
        return hidden.sum() * 0.0
    return _head_cross_entropy(
        head, hidden.flatten(0, -2).index_select(0, positions), labels.flatten().index_select(0, positions)
    )


def _head_cross_entropy(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, ignore: bool = False
) -> torch.Tensor:
    """Mean cross-entropy of ``head(hidden)`` ``(N, V)`` against ``targets`` ``(N,)``."""
    predictions = getattr(head, "predictions", None)
    if isinstance(getattr(predictions, "decoder", None), nn.Linear) and hasattr(predictions, "transform"):
        # BERT's head: transform, then the vocabulary projection fused with the loss (no N x V logits kept).
        decoder = predictions.decoder
        return linear_cross_entropy(
            predictions.transform(hidden), decoder.weight, decoder.bias, targets, ignore=ignore
        )
    logits = head(hidden).float()
    return ignored_mean_cross_entropy(logits, targets) if ignore else F.cross_entropy(logits, targets)


def projection_parts(
    head: nn.Module,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """``(transform, weight, bias)`` of an MLM head: ``head(h) == F.linear(transform(h), weight, bias)``.

    For the fused paths that project onto the vocabulary themselves (no ``N x V`` logits kept). This is
    the BERT layout (``predictions.transform`` + ``predictions.decoder``).
    """
    predictions = getattr(head, "predictions", None)
    decoder = getattr(predictions, "decoder", None)
    if not isinstance(decoder, nn.Linear) or not hasattr(predictions, "transform"):
        raise TypeError(
            f"{type(head).__name__} does not have the BertOnlyMLMHead layout (predictions.transform + "
            "predictions.decoder)"
        )
    return predictions.transform, decoder.weight, decoder.bias
