"""The RetroMAE "enhanced decoding" layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.activations import ACT2FN


def init_like_bert(module: nn.Module, initializer_range: float = 0.02) -> None:
    """BERT's ``_init_weights`` for the Linear and LayerNorm layers of ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=initializer_range)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            nn.init.ones_(layer.weight)
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
    ) -> None:
        super().__init__()
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
        self.reset_parameters(initializer_range)

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> EnhancedDecoderLayer:
        """A decoder layer shaped like one layer of the encoder described by a BERT-style config."""
        return cls(
            hidden_size=config.hidden_size,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            hidden_dropout_prob=config.hidden_dropout_prob,
            attention_probs_dropout_prob=config.attention_probs_dropout_prob,
            initializer_range=config.initializer_range,
        )

    def reset_parameters(self, initializer_range: float = 0.02) -> None:
        init_like_bert(self, initializer_range)

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
