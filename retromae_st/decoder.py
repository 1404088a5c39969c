"""The RetroMAE "enhanced decoding" layer, and saving it beside an exported masked LM."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

logger = logging.getLogger(__name__)

#: File names of a trained decoder written next to a ``*ForMaskedLM`` export.
DECODER_WEIGHTS = "retromae_decoder.safetensors"
DECODER_CONFIG = "retromae_decoder_config.json"


def init_like_bert(module: nn.Module, initializer_range: float = 0.02) -> None:
    """BERT's ``_init_weights`` for the Linear and LayerNorm layers of ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=initializer_range)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            nn.init.ones_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class EnhancedDecoderLayer(nn.Module):
    """One post-LayerNorm transformer layer whose query and key/value streams differ.

    This is the layer of RetroMAE's enhanced decoding (Xiao et al. 2022, section 3.3; the authors'
    ``BertLayerForDecoder``): the query stream ``H1`` is the sentence embedding plus position
    embeddings, the key/value stream ``H2`` is ``[sentence embedding; token embeddings]``, and a
    per-row attention mask decides which keys each query row sees. As in the authors' layer, the
    attention residual adds the *query* stream, and the feed-forward block follows BERT's.

    Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` with a boolean mask, so
    PyTorch picks a fused kernel where one exists.

    Args:
        hidden_size: Width of both streams.
        num_attention_heads: Number of attention heads; must divide ``hidden_size``.
        intermediate_size: Width of the feed-forward block.
        hidden_act: Activation of the feed-forward block (a name in ``transformers.activations``).
        layer_norm_eps: LayerNorm epsilon.
        hidden_dropout_prob: Dropout after the attention output and the feed-forward output.
        attention_probs_dropout_prob: Dropout on the attention probabilities.
        initializer_range: Standard deviation of the normal initialisation (BERT's ``_init_weights``).
        max_position_embeddings: When set, the layer owns a learned position table of this many rows
            (``position_embeddings``), for encoders without an absolute position table of their own
            (ModernBERT's rotary positions); our extension of the paper, see ``docs/families.md``.
            ``None`` (BERT, RoBERTa, XLM-R): the encoder's own position embeddings are used.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        intermediate_size: int,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        initializer_range: float = 0.02,
        max_position_embeddings: int | None = None,
    ) -> None:
        super().__init__()
        self.config = {
            "hidden_size": hidden_size,
            "num_attention_heads": num_attention_heads,
            "intermediate_size": intermediate_size,
            "hidden_act": hidden_act,
            "layer_norm_eps": layer_norm_eps,
            "hidden_dropout_prob": hidden_dropout_prob,
            "attention_probs_dropout_prob": attention_probs_dropout_prob,
            "initializer_range": initializer_range,
            "max_position_embeddings": max_position_embeddings,
        }
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})"
            )
        self.num_attention_heads = num_attention_heads
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attention_output = nn.Linear(hidden_size, hidden_size)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.intermediate = nn.Linear(hidden_size, intermediate_size)
        self.activation = ACT2FN[hidden_act]
        self.output = nn.Linear(intermediate_size, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        self.position_embeddings = (
            nn.Embedding(max_position_embeddings, hidden_size)
            if max_position_embeddings is not None
            else None
        )
        self.reset_parameters(initializer_range)

    @classmethod
    def from_config(cls, config: PretrainedConfig, own_positions: bool = False) -> EnhancedDecoderLayer:
        """A decoder layer shaped like one layer of the encoder described by ``config``.

        Reads BERT's config names and, where a family names them otherwise, its own (ModernBERT's
        ``hidden_activation``, ``norm_eps``, ``attention_dropout``, ``mlp_dropout``). ``own_positions``:
        give the layer a learned position table of ``config.max_position_embeddings`` rows.
        """
        return cls(
            hidden_size=_config_value(config, "hidden_size"),
            num_attention_heads=_config_value(config, "num_attention_heads"),
            intermediate_size=_config_value(config, "intermediate_size"),
            hidden_act=_config_value(config, "hidden_act", "hidden_activation"),
            layer_norm_eps=_config_value(config, "layer_norm_eps", "norm_eps"),
            hidden_dropout_prob=_config_value(config, "hidden_dropout_prob", "mlp_dropout"),
            attention_probs_dropout_prob=_config_value(
                config, "attention_probs_dropout_prob", "attention_dropout"
            ),
            initializer_range=_config_value(config, "initializer_range"),
            max_position_embeddings=_config_value(config, "max_position_embeddings")
            if own_positions
            else None,
        )

    def reset_parameters(self, initializer_range: float = 0.02) -> None:
        init_like_bert(self, initializer_range)
        if self.position_embeddings is not None:
            nn.init.normal_(self.position_embeddings.weight, std=initializer_range)

    def get_config_dict(self) -> dict[str, Any]:
        return dict(self.config)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_attention_heads, width // self.num_attention_heads).transpose(
            1, 2
        )

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query: ``(B, L, H)`` query stream.
            key_value: ``(B, L, H)`` key/value stream.
            visible: ``(B, L, L)`` bool, ``True`` where query row ``i`` may attend to key ``j``. Every
                row needs at least one visible key.

        Returns:
            ``(B, L, H)`` hidden states of the query positions.
        """
        q = self._split_heads(self.query(query))
        k = self._split_heads(self.key(key_value))
        v = self._split_heads(self.value(key_value))
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=visible[:, None, :, :],
            dropout_p=self.attention_probs_dropout_prob if self.training else 0.0,
        )
        context = context.transpose(1, 2).flatten(2)
        attended = self.attention_norm(self.dropout(self.attention_output(context)) + query)
        transformed = self.output(self.activation(self.intermediate(attended)))
        return self.output_norm(self.dropout(transformed) + attended)


def _config_value(config: PretrainedConfig, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    raise ValueError(
        f"{type(config).__name__} ({config.model_type!r}) has none of {names}, which the RetroMAE decoder needs; "
        "supported encoders: BERT, RoBERTa, XLM-RoBERTa, ModernBERT (see docs/families.md)"
    )


def save_decoder(decoder: EnhancedDecoderLayer, output_dir: str, loss_name: str) -> None:
    """Writes ``decoder`` to ``output_dir`` as :data:`DECODER_WEIGHTS` + :data:`DECODER_CONFIG`."""
    from safetensors.torch import save_file

    os.makedirs(output_dir, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in decoder.state_dict().items()}
    save_file(state, os.path.join(output_dir, DECODER_WEIGHTS))
    config = {"decoder": decoder.get_config_dict(), "trained_with": loss_name}
    with open(os.path.join(output_dir, DECODER_CONFIG), "w") as handle:
        json.dump(config, handle, indent=2)


#: Decoder settings that decide the shapes of its tensors; a saved decoder must agree on them.
_SHAPE_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size", "max_position_embeddings")


def load_saved_decoder(decoder: EnhancedDecoderLayer, name_or_path: str | None) -> bool:
    """Loads the decoder saved beside the checkpoint ``name_or_path`` into ``decoder``, if there is one.

    Returns whether one was loaded; the log says which it was. A saved decoder of another shape is an error
    (naming the file and the settings that differ), not a silent fresh start.
    """
    from safetensors.torch import load_file

    from retromae_st.mlm_head import _resolve_weight_file

    weights = _resolve_weight_file(name_or_path, DECODER_WEIGHTS) if name_or_path else None
    config_path = _resolve_weight_file(name_or_path, DECODER_CONFIG) if weights else None
    if weights is None or config_path is None:
        logger.info("No saved RetroMAE decoder in %s: initialised a new decoder", name_or_path)
        return False
    with open(config_path) as handle:
        saved_config = json.load(handle)
    saved = saved_config["decoder"]
    ours = decoder.get_config_dict()
    differing = {key: (saved.get(key), ours[key]) for key in _SHAPE_KEYS if saved.get(key) != ours[key]}
    if differing:
        raise ValueError(
            f"The decoder saved in {config_path} does not fit this encoder: "
            + ", ".join(
                f"{key} saved {theirs!r} vs needed {needed!r}" for key, (theirs, needed) in differing.items()
            )
        )
    decoder.load_state_dict(load_file(weights), strict=True)
    logger.info(
        "Loaded the trained RetroMAE decoder saved in %s (trained with %s)",
        name_or_path,
        saved_config.get("trained_with", "an unknown loss"),
    )
    return True
