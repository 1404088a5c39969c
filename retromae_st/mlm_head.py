"""The masked-language-model head shared by the encoder and the decoder.

RetroMAE predicts tokens with the encoder checkpoint's own MLM head, whose output projection is tied
to the word embeddings. A sentence-transformers folder holds only the encoder, so the head is read
from the checkpoint's weight files when they have one, whatever the family calls it
(``cls.predictions`` for BERT, ``lm_head`` for RoBERTa / XLM-RoBERTa, ``head`` + ``decoder`` for
ModernBERT, see :data:`HEAD_LAYOUTS`), and is otherwise freshly initialised and tied.

Every head is a transform (dense -> activation -> LayerNorm) followed by a vocabulary projection;
:func:`projection_parts` is the one way the losses and :class:`retromae_st.DupMAEPooling` reach those
parts. BERT-layout encoders keep ``transformers``' own ``BertOnlyMLMHead``; the other families get a
:class:`MaskedLMHead`, which holds the same tensors under uniform names.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import PretrainedConfig
from transformers.activations import ACT2FN
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


@dataclass(frozen=True)
class HeadLayout:
    """Where a family's ``*ForMaskedLM`` checkpoint keeps the parts of its MLM head, and how they are built.

    Attributes:
        dense: Checkpoint name of the transform's first linear layer.
        norm: Checkpoint name of the transform's LayerNorm.
        projection: Checkpoint name of the vocabulary projection (a ``Linear``).
        bias: Checkpoint name of a separate vocabulary bias parameter that the projection's bias is tied
            to (RoBERTa's ``lm_head.bias``), or ``None``.
        activation: The transform's activation when the family fixes it, else ``None``.
        activation_attr: Config attribute naming the activation when ``activation`` is ``None``.
        eps_attr: Config attribute of the LayerNorm epsilon.
        dense_bias_attr / norm_bias_attr / projection_bias_attr: Config attributes that switch the
            biases off (``None``: the bias is always there).
    """

    dense: str
    norm: str
    projection: str
    bias: str | None = None
    activation: str | None = None
    activation_attr: str = "hidden_act"
    eps_attr: str = "layer_norm_eps"
    dense_bias_attr: str | None = None
    norm_bias_attr: str | None = None
    projection_bias_attr: str | None = None

    @property
    def prefixes(self) -> tuple[str, ...]:
        names = (self.dense, self.norm, self.projection) + ((self.bias,) if self.bias else ())
        return tuple(f"{name}." if name != self.bias else name for name in names)


_ROBERTA_LAYOUT = HeadLayout(
    dense="lm_head.dense",
    norm="lm_head.layer_norm",
    projection="lm_head.decoder",
    bias="lm_head.bias",
    activation="gelu",  # RobertaLMHead applies gelu whatever config.hidden_act says
)

#: The MLM head layouts of the non-BERT families, by ``config.model_type``. Any other encoder is read
#: as the BERT layout (``cls.predictions``).
HEAD_LAYOUTS: dict[str, HeadLayout] = {
    "roberta": _ROBERTA_LAYOUT,
    "xlm-roberta": _ROBERTA_LAYOUT,
    "modernbert": HeadLayout(
        dense="head.dense",
        norm="head.norm",
        projection="decoder",
        activation_attr="classifier_activation",
        eps_attr="norm_eps",
        dense_bias_attr="classifier_bias",
        norm_bias_attr="norm_bias",
        projection_bias_attr="decoder_bias",
    ),
}


class MaskedLMHead(nn.Module):
    """An MLM head in one layout: ``transform`` (dense -> activation -> LayerNorm), then the vocabulary
    projection ``decoder`` (``Linear``, its weight tied to the word embeddings when the checkpoint ties them).

    It computes exactly what the family's own head computes (RoBERTa's ``RobertaLMHead``, ModernBERT's
    ``ModernBertPredictionHead`` + ``decoder``); :func:`head_from_layout` fills it from a checkpoint and
    :func:`checkpoint_head_state` gives its tensors back under the checkpoint's names.

    Args:
        hidden_size: Width of the encoder's hidden states.
        vocab_size: Number of rows of the vocabulary projection.
        hidden_act: Activation of the transform (a name in ``transformers.activations``).
        norm_eps: LayerNorm epsilon.
        dense_bias / norm_bias / projection_bias: Whether those layers have a bias.
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        hidden_act: str = "gelu",
        norm_eps: float = 1e-12,
        dense_bias: bool = True,
        norm_bias: bool = True,
        projection_bias: bool = True,
    ) -> None:
        super().__init__()
        self.hidden_act = hidden_act
        self.dense = nn.Linear(hidden_size, hidden_size, bias=dense_bias)
        self.activation = ACT2FN[hidden_act]
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps, bias=norm_bias)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=projection_bias)

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.dense(hidden)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))


def projection_parts(
    head: nn.Module,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """``(transform, weight, bias)`` of an MLM head: ``head(h) == F.linear(transform(h), weight, bias)``.

    The one way to reach a head's parts, for every supported family (a ``BertOnlyMLMHead`` or a
    :class:`MaskedLMHead`). ``bias`` is ``None`` for a projection without one.
    """
    if isinstance(head, MaskedLMHead):
        return head.transform, head.decoder.weight, head.decoder.bias
    predictions = getattr(head, "predictions", None)
    decoder = getattr(predictions, "decoder", None)
    if isinstance(decoder, nn.Linear) and hasattr(predictions, "transform"):
        return predictions.transform, decoder.weight, decoder.bias
    raise TypeError(
        f"{type(head).__name__} is not an MLM head this package knows (BertOnlyMLMHead or MaskedLMHead)"
    )


def head_activation(head: nn.Module, config: PretrainedConfig) -> str:
    """Name of the activation of ``head``'s transform (a BERT head uses ``config.hidden_act``)."""
    if isinstance(head, MaskedLMHead):
        return head.hidden_act
    return config.hidden_act


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


def _read_tensors(path: str, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        with safe_open(path, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefixes)}
    # Never unpickle arbitrary objects from a checkpoint: tensors only.
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value for key, value in state.items() if key.startswith(prefixes)}


def checkpoint_tensors(name_or_path: str | None, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint (folder or hub id) whose names start with one of ``prefixes``."""
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
                        if key.startswith(prefixes)
                    }
                )
            tensors = {}
            for shard in shards:
                shard_path = _resolve_weight_file(name_or_path, shard)
                if shard_path is not None:
                    tensors.update(_read_tensors(shard_path, prefixes))
            return tensors
        return _read_tensors(path, prefixes)
    return {}


def pretrained_head_state(name_or_path: str | None) -> dict[str, torch.Tensor]:
    """The ``cls.*`` tensors of a ``BertForMaskedLM``-layout checkpoint, without the ``cls.`` prefix.

    Returns an empty dict when the checkpoint has no MLM head (e.g. a plain ``BertModel``).
    """
    tensors = checkpoint_tensors(name_or_path, (HEAD_PREFIX,))
    return {key[len(HEAD_PREFIX) :]: value for key, value in tensors.items()}


def tie_to_embeddings(head: BertOnlyMLMHead, word_embeddings: nn.Embedding) -> None:
    """Shares the head's output projection with the word embeddings, as ``BertForMaskedLM`` does."""
    head.predictions.decoder.weight = word_embeddings.weight
    head.predictions.decoder.bias = head.predictions.bias


def build_mlm_head(
    config: PretrainedConfig, word_embeddings: nn.Embedding, name_or_path: str | None
) -> nn.Module:
    """The checkpoint's own MLM head when it has one, else a new head tied to ``word_embeddings``.

    BERT-layout encoders (every ``model_type`` not in :data:`HEAD_LAYOUTS`) get a ``BertOnlyMLMHead``
    read from ``cls.*``; the others a :class:`MaskedLMHead` read from their own names. The log says
    which head was used.
    """
    layout = HEAD_LAYOUTS.get(config.model_type)
    if layout is not None:
        return head_from_layout(layout, config, word_embeddings, name_or_path)
    return _bert_head(config, word_embeddings, name_or_path)


def _bert_head(
    config: PretrainedConfig, word_embeddings: nn.Embedding, name_or_path: str | None
) -> BertOnlyMLMHead:
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
        logger.info("Loaded the pretrained MLM head of %s (cls.predictions)", name_or_path)
    else:
        init_like_bert(head, getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(head.predictions.bias)
        if config.model_type != "bert" and any(
            name.endswith("ForMaskedLM") for name in getattr(config, "architectures", None) or []
        ):
            logger.warning(
                "%s is a %s masked LM whose MLM head retromae-st does not know how to read (known: BERT's "
                "cls.predictions and %s): its head is NOT used, a new one is trained from scratch",
                name_or_path,
                config.model_type,
                ", ".join(sorted(HEAD_LAYOUTS)),
            )
        logger.info(
            "No pretrained MLM head in %s: initialised a new one tied to the word embeddings", name_or_path
        )
    tie_to_embeddings(head, word_embeddings)
    return head


def _layout_head(layout: HeadLayout, config: PretrainedConfig, vocab_size: int) -> MaskedLMHead:
    def has_bias(attribute: str | None) -> bool:
        return True if attribute is None else bool(getattr(config, attribute))

    return MaskedLMHead(
        hidden_size=config.hidden_size,
        vocab_size=vocab_size,
        hidden_act=layout.activation or getattr(config, layout.activation_attr),
        norm_eps=getattr(config, layout.eps_attr),
        dense_bias=has_bias(layout.dense_bias_attr),
        norm_bias=has_bias(layout.norm_bias_attr),
        projection_bias=has_bias(layout.projection_bias_attr),
    )


def _checkpoint_names(layout: HeadLayout) -> dict[str, str]:
    """Our :class:`MaskedLMHead` key -> the checkpoint's key."""
    return {
        "dense.weight": f"{layout.dense}.weight",
        "dense.bias": f"{layout.dense}.bias",
        "norm.weight": f"{layout.norm}.weight",
        "norm.bias": f"{layout.norm}.bias",
        "decoder.weight": f"{layout.projection}.weight",
        "decoder.bias": f"{layout.projection}.bias",
    }


def head_from_layout(
    layout: HeadLayout, config: PretrainedConfig, word_embeddings: nn.Embedding, name_or_path: str | None
) -> MaskedLMHead:
    """A :class:`MaskedLMHead` holding the checkpoint's head tensors (a new head when it has none).

    The projection is tied to ``word_embeddings`` when the checkpoint ties them
    (``config.tie_word_embeddings``) and always for a new head.
    """
    head = _layout_head(layout, config, word_embeddings.num_embeddings)
    tied = bool(getattr(config, "tie_word_embeddings", True))
    saved = checkpoint_tensors(name_or_path, layout.prefixes)
    if saved:
        state = {}
        for ours, theirs in _checkpoint_names(layout).items():
            if theirs in saved:
                state[ours] = saved[theirs]
        if layout.bias is not None and layout.bias in saved and head.decoder.bias is not None:
            state["decoder.bias"] = saved[layout.bias]  # the tied bias may be stored under either name
        if tied:
            state.pop("decoder.weight", None)
        expected = {key for key in head.state_dict() if not (tied and key == "decoder.weight")}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"The MLM head in {name_or_path!r} does not have the {config.model_type} layout "
                f"({layout.dense}, {layout.norm}, {layout.projection}): missing {missing}, unexpected {unexpected}"
            )
        head.load_state_dict(state, strict=False)
        parts = sorted({name.split(".")[0] for name in (layout.dense, layout.norm, layout.projection)})
        logger.info("Loaded the pretrained MLM head of %s (%s)", name_or_path, " + ".join(parts))
    else:
        tied = True
        init_like_bert(head, getattr(config, "initializer_range", 0.02))
        logger.info(
            "No pretrained MLM head in %s: initialised a new one tied to the word embeddings", name_or_path
        )
    if tied:
        head.decoder.weight = word_embeddings.weight
    return head


def checkpoint_head_state(head: nn.Module, model_type: str) -> dict[str, torch.Tensor]:
    """``head``'s tensors under the names of the family's ``*ForMaskedLM`` checkpoint (tied ones included)."""
    layout = HEAD_LAYOUTS.get(model_type)
    if layout is None:
        if not isinstance(head, BertOnlyMLMHead):
            raise TypeError(f"a {model_type!r} encoder needs a BertOnlyMLMHead, got {type(head).__name__}")
        return {f"{HEAD_PREFIX}{key}": value for key, value in head.state_dict().items()}
    if not isinstance(head, MaskedLMHead):
        raise TypeError(f"a {model_type!r} encoder needs a MaskedLMHead, got {type(head).__name__}")
    names = _checkpoint_names(layout)
    state = {names[key]: value for key, value in head.state_dict().items()}
    if layout.bias is not None and head.decoder.bias is not None:
        state[layout.bias] = head.decoder.bias
    return state


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
    try:
        transform, weight, bias = projection_parts(head)
    except TypeError:
        logits = head(hidden).float()
        return ignored_mean_cross_entropy(logits, targets) if ignore else F.cross_entropy(logits, targets)
    # transform, then the vocabulary projection fused with the loss (no N x V logits kept)
    return linear_cross_entropy(transform(hidden), weight, bias, targets, ignore=ignore)
