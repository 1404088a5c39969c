"""DupMAE's unified sentence representation as a sentence-transformers module."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Module
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertOnlyMLMHead

from retromae_st.masking import check_token_rules
from retromae_st.mlm_head import MaskedLMHead, projection_parts
from retromae_st.model_card import RetroMAEModelCardData
from retromae_st.vocab_screening import bf16_screening_supported, ordered_top_k, padded_rows, screened_top_k

logger = logging.getLogger(__name__)

ACTIVATIONS = ("none", "relu", "log1p_relu")


def max_pool_vocab(
    head: nn.Module, hidden: torch.Tensor, ordinary: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """Max over the ordinary positions of each row of the MLM logits ``head(hidden)``: ``(B, V)``.

    Only the ordinary tokens' hidden states are projected, ``chunk_size`` of them at a time (all at once
    when ``None``), and reduced into the ``(B, V)`` result with ``scatter_reduce(amax)``: at most
    ``chunk_size x V`` logits exist at any time and never ``B x L x V``. The max is exact, so chunked
    and unchunked results are identical (a chunk of fewer than 4 tokens is padded to 4 rows, so that every
    chunk takes the same float32 GEMM kernel). Rows without an ordinary token are all zeros.
    """
    rows = ordinary.nonzero(as_tuple=True)[0]
    tokens = hidden[ordinary]
    vocab_size = _head_vocab_size(head)
    pooled = hidden.new_full((hidden.size(0), vocab_size), float("-inf"))
    step = tokens.size(0) if chunk_size is None else chunk_size
    for start in range(0, tokens.size(0), max(step, 1)):
        logits = padded_rows(head, tokens[start : start + step]).to(pooled.dtype)
        index = rows[start : start + step, None].expand(-1, vocab_size)
        pooled = pooled.scatter_reduce(0, index, logits, reduce="amax", include_self=True)
        del logits, index  # free this chunk before the next one is projected
    empty = ~ordinary.any(dim=1)
    return torch.where(empty[:, None], torch.zeros_like(pooled), pooled)


def _head_vocab_size(head: nn.Module) -> int:
    return projection_parts(head)[1].size(0)


def _transform_layers(head: nn.Module) -> tuple[nn.Linear, nn.LayerNorm]:
    """The dense layer and LayerNorm of an MLM head's transform."""
    if isinstance(head, MaskedLMHead):
        return head.dense, head.norm
    transform = head.predictions.transform
    return transform.dense, transform.LayerNorm


def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


class DupMAEPooling(Module):
    config_keys: list[str] = [
        "hidden_size",
        "vocab_size",
        "top_k",
        "projection_dim",
        "activation",
        "chunk_size",
        "special_token_ids",
        "layer_norm_eps",
        "hidden_act",
        "bf16_screening",
        "token_rules",
    ]
    #: The rule of folders saved before ``token_rules`` existed (they pooled the non-special tokens).
    LEGACY_TOKEN_RULES = "skip_special"

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        top_k: int = 256,
        projection_dim: int | None = None,
        activation: str = "none",
        chunk_size: int = 512,
        special_token_ids: list[int] | None = None,
        layer_norm_eps: float = 1e-12,
        hidden_act: str = "gelu",
        bf16_screening: bool | None = None,
        token_rules: str = "authors",
    ) -> None:
        """
        DupMAE's unified representation ``[e_CLS ; e_OT]`` of a text, for a DupMAE-pre-trained encoder.

        - ``e_CLS``: the final ``[CLS]`` hidden state, optionally mapped by a linear projection to
          ``projection_dim`` (the paper's dimension reduction of the dense part);
        - ``e_OT``: the ordinary-token (OT) vector. The hidden state of every pooled position goes through
          the MLM head into vocabulary space and the result is max-pooled over positions, as in the authors'
          ``ot_embedding``. The pooled positions are those :class:`retromae_st.DupMAELoss` pooled in training
          (``token_rules``): ``"authors"``, every non-padding position after ``[CLS]``, ``[SEP]`` included, as
          the authors do; ``"skip_special"``, only the tokens that are not special (nor ``[CLS]``, nor
          padding). The vector is then sparsified to its ``top_k`` largest entries (the paper's dimension
          reduction of the OT part).

        The output ``sentence_embedding`` is the concatenation of the two, of size
        ``(projection_dim or hidden_size) + vocab_size``, so the inner product of two outputs is the paper's
        relevance score ``<e_CLS^q, e_CLS^p> + <e_OT^q, e_OT^p>``: use ``similarity_fn_name="dot"``
        (:func:`retromae_st.build_dupmae_model` sets it). For large corpora use
        :class:`retromae_st.DupMAERetriever`, which keeps only the ``top_k`` indices/values per text
        (:meth:`sparse_only` turns off the dense vocabulary-sized output).

        Choices the paper leaves open, made parameters here:

        - ``activation`` applied to the pooled logits: ``"none"`` (default) is what the authors' code
          computes (raw max-pooled MLM logits, no ReLU); ``"relu"`` and ``"log1p_relu"`` (SPLADE-style
          saturation) are alternatives. With ``"none"`` every entry can be non-zero, so the top-k keeps
          exactly ``top_k`` entries; with the other two, entries that are zero are dropped, so fewer can remain.
          A text with no pooled position has an all-zero OT vector.
        - ``projection_dim``: the projection is a new ``Linear(hidden_size, projection_dim, bias=False)``;
          it is not pre-trained (DupMAE pre-training has no such layer) and must be fine-tuned.

        Reload a saved model with :func:`retromae_st.load_dupmae_model` (or
        ``SentenceTransformer(path, trust_remote_code=True)`` for a folder you trust). Plain
        ``SentenceTransformer(path)`` refuses it: sentence-transformers 6 imports module classes outside its
        own namespace only with that flag and offers no registration hook (details in
        :func:`retromae_st.load_dupmae_model`).

        The module keeps its own copy of the MLM head (transform + output projection + bias), saved
        with the model as ``model.safetensors`` in the module folder.

        Args:
            hidden_size: Hidden size of the encoder.
            vocab_size: Output size of the MLM head.
            top_k: Number of OT entries kept per text (``1 <= top_k <= vocab_size``).
            projection_dim: Size of the projected ``[CLS]`` part, or ``None`` to keep ``hidden_size``.
            activation: ``"none"``, ``"relu"`` or ``"log1p_relu"``, applied to the pooled OT logits.
            chunk_size: At most this many tokens are projected to the vocabulary at once, bounding the
                memory of the OT computation to ``chunk_size x vocab_size`` logits.
            special_token_ids: Token ids excluded from the OT pooling under ``token_rules="skip_special"``
                (``[CLS]``, ``[SEP]``, ``[PAD]``, ...).
            layer_norm_eps: Epsilon of the MLM head's LayerNorm.
            hidden_act: Activation of the MLM head's transform.
            bf16_screening: Find the top-k OT entries with a bfloat16 screening pass over the vocabulary
                projection and an exact float32 recomputation of the candidates
                (:func:`retromae_st.vocab_screening.screened_top_k`): the same indices and values as the
                float32 path, about 2-3x faster for the head on CPUs with native bfloat16. ``None`` (default):
                on when it applies (float32 inference on such a CPU, ``activation="none"``); ``False``: never.
            token_rules: The pooled positions, as the training loss's ``token_rules`` (``"authors"`` or
                ``"skip_special"``). Saved with the model; a folder saved without it (earlier versions) loads
                with ``"skip_special"``, the rule it was trained with.

        References:
            - RetroMAE-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented Language Models
              (Xiao et al., ACL 2023): https://arxiv.org/abs/2305.02564 (v1 of the same work: 2211.08769)
            - Code: https://github.com/staoxiao/RetroMAE (``src/pretrain/modeling_duplex.py``)

        Example:
            ::

                from retromae_st import DupMAELoss, build_dupmae_model

                loss = DupMAELoss(model)              # ... pre-train with a SentenceTransformerTrainer ...
                dupmae_model = build_dupmae_model(loss, top_k=256)
                dupmae_model.save("dupmae-model")     # load_dupmae_model("dupmae-model") reloads it
                scores = dupmae_model.similarity(dupmae_model.encode(queries), dupmae_model.encode(passages))
        """
        super().__init__()
        self.hidden_size = _check_positive_int("hidden_size", hidden_size)
        self.vocab_size = _check_positive_int("vocab_size", vocab_size)
        self.top_k = _check_positive_int("top_k", top_k)
        if top_k > vocab_size:
            raise ValueError(f"top_k must be <= vocab_size ({vocab_size}), got {top_k}")
        self.projection_dim = _check_positive_int("projection_dim", projection_dim, allow_none=True)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.chunk_size = _check_positive_int("chunk_size", chunk_size)
        self.special_token_ids = sorted({int(token) for token in special_token_ids or []})
        if any(not 0 <= token < vocab_size for token in self.special_token_ids):
            raise ValueError(f"special_token_ids must lie in [0, {vocab_size}), got {self.special_token_ids}")
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        if bf16_screening not in (None, True, False):
            raise TypeError(f"bf16_screening must be None, True or False, got {bf16_screening!r}")
        self.bf16_screening = bf16_screening
        self.token_rules = check_token_rules(token_rules)

        head_config = BertConfig(
            hidden_size=hidden_size,
            vocab_size=vocab_size,
            layer_norm_eps=layer_norm_eps,
            hidden_act=hidden_act,
        )
        self.mlm_head = BertOnlyMLMHead(head_config)
        # The head's forward adds decoder.bias; save() stores it once as predictions.bias: keep them one tensor.
        self.mlm_head.predictions.decoder.bias = self.mlm_head.predictions.bias
        self.projection = (
            nn.Linear(hidden_size, projection_dim, bias=False) if projection_dim is not None else None
        )
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[self.special_token_ids] = True
        self.register_buffer("special_tokens", special, persistent=False)
        self.dense_output = True

    @classmethod
    def from_mlm_head(
        cls, head: nn.Module, special_token_ids: list[int], hidden_act: str = "gelu", **kwargs
    ) -> DupMAEPooling:
        """A pooling holding a copy of ``head`` (e.g. a trained :class:`retromae_st.DupMAELoss`'s), of any
        supported family (see :func:`retromae_st.mlm_head.projection_parts`); ``hidden_act`` is the
        activation of the head's transform (``retromae_st.mlm_head.head_activation``).

        The copy is kept in ``BertOnlyMLMHead``'s layout (the saved format of this module); a layer of the
        source head without a bias (ModernBERT's) gets a zero bias, which computes the same logits.
        """
        _, decoder_weight, decoder_bias = projection_parts(head)
        dense, norm = _transform_layers(head)
        pooling = cls(
            hidden_size=decoder_weight.size(1),
            vocab_size=decoder_weight.size(0),
            special_token_ids=special_token_ids,
            layer_norm_eps=norm.eps,
            hidden_act=hidden_act,
            **kwargs,
        )
        with torch.no_grad():
            target = pooling.mlm_head.predictions
            for source, copy in ((dense, target.transform.dense), (norm, target.transform.LayerNorm)):
                copy.weight.copy_(source.weight)
                copy.bias.copy_(source.bias if source.bias is not None else torch.zeros_like(copy.bias))
            target.decoder.weight.copy_(decoder_weight)
            target.bias.copy_(decoder_bias if decoder_bias is not None else torch.zeros_like(target.bias))
        # BertOnlyMLMHead(config) ties decoder.bias to bias; keep that tie after the copy.
        target.decoder.bias = target.bias
        return pooling.to(decoder_weight.device)

    @property
    def cls_dim(self) -> int:
        return self.projection_dim or self.hidden_size

    def get_embedding_dimension(self) -> int:
        return self.cls_dim + self.vocab_size

    @contextlib.contextmanager
    def sparse_only(self) -> Iterator[None]:
        """Within this block, ``forward`` returns only the compact outputs, not the dense ``sentence_embedding``."""
        previous, self.dense_output = self.dense_output, False
        try:
            yield
        finally:
            self.dense_output = previous

    def cls_embedding(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        cls = token_embeddings[:, 0]
        return self.projection(cls) if self.projection is not None else cls

    def ordinary_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` bool, the pooled positions: not ``[CLS]`` (position 0), not padding, and under
        ``"skip_special"`` not special."""
        ordinary = attention_mask.bool().clone()
        if self.token_rules == "skip_special":
            ordinary &= ~self.special_tokens[input_ids]
        ordinary[:, 0] = False
        return ordinary

    def ot_vector(
        self, token_embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The dense OT vector ``(B, V)`` before sparsification (activation applied)."""
        ordinary = self.ordinary_tokens(input_ids, attention_mask)
        pooled = max_pool_vocab(self.mlm_head, token_embeddings, ordinary, self.chunk_size)
        if self.activation == "relu":
            pooled = torch.relu(pooled)
        elif self.activation == "log1p_relu":
            pooled = torch.log1p(torch.relu(pooled))
        return pooled

    def top_k_sparse(self, ot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (int64) and values of the ``top_k`` largest OT entries per row, largest first (equal values
        by ascending index).

        Entries that are exactly zero (rows without ordinary tokens, or zeros from ReLU) carry value 0
        and so add nothing to a score; :func:`top_k_nonzero` counts the non-zeros.
        """
        values, indices = ordered_top_k(ot, self.top_k)
        return indices, values

    def uses_bf16_screening(self, token_embeddings: torch.Tensor) -> bool:
        """Whether ``forward`` takes the (exact) bfloat16 screening path for these inputs."""
        if self.bf16_screening is False or self.activation != "none" or token_embeddings.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and (token_embeddings.requires_grad or self.mlm_head.training):
            return False
        if (
            token_embeddings.dtype != torch.float32
            or self.mlm_head.predictions.decoder.weight.dtype != torch.float32
        ):
            return False
        return bool(self.bf16_screening) or bf16_screening_supported(token_embeddings.device)

    def ot_top_k(
        self, token_embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices and values of the ``top_k`` largest OT entries, without the dense ``(B, V)`` OT vector
        when the bfloat16 screening applies (same result either way)."""
        if self.uses_bf16_screening(token_embeddings):
            ordinary = self.ordinary_tokens(input_ids, attention_mask)
            return screened_top_k(self.mlm_head, token_embeddings, ordinary, self.top_k, self.chunk_size)
        return self.top_k_sparse(self.ot_vector(token_embeddings, input_ids, attention_mask))

    def forward(self, features: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        token_embeddings = features["token_embeddings"]
        cls = self.cls_embedding(token_embeddings)
        indices, values = self.ot_top_k(token_embeddings, features["input_ids"], features["attention_mask"])
        features["cls_embedding"] = cls
        features["ot_indices"] = indices
        features["ot_values"] = values
        if self.dense_output:
            sparse = values.new_zeros((values.size(0), self.vocab_size)).scatter_(1, indices, values)
            features["sentence_embedding"] = torch.cat([cls, sparse.to(cls.dtype)], dim=1)
        return features

    def get_config_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.config_keys}

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        # The head's decoder.bias is the same tensor as its bias: save it once.
        state = {
            key: value
            for key, value in self.state_dict().items()
            if key != "mlm_head.predictions.decoder.bias"
        }
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(
                {key: value.contiguous().cpu() for key, value in state.items()},
                f"{output_path}/model.safetensors",
            )
        else:
            torch.save(state, f"{output_path}/pytorch_model.bin")

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs,
    ) -> DupMAEPooling:
        hub_kwargs = {
            "subfolder": subfolder,
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        config = cls.load_config(model_name_or_path=model_name_or_path, **hub_kwargs)
        config.setdefault("token_rules", cls.LEGACY_TOKEN_RULES)
        pooling = cls(**config)
        state = cls.load_torch_weights(model_name_or_path=model_name_or_path, **hub_kwargs)
        state["mlm_head.predictions.decoder.bias"] = state["mlm_head.predictions.bias"]
        pooling.load_state_dict(state, strict=True)
        return pooling

    @property
    def citation(self) -> str:
        return DUPMAE_CITATION


def top_k_nonzero(values: torch.Tensor) -> torch.Tensor:
    """Number of non-zero kept OT entries per row."""
    return (values != 0).sum(dim=1)


DUPMAE_CITATION = """
@inproceedings{xiao2023retromae2,
    title = "{R}etro{MAE}-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented Language Models",
    author = "Xiao, Shitao and Liu, Zheng and Shao, Yingxia and Cao, Zhao",
    booktitle = "Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics",
    year = "2023",
    url = "https://arxiv.org/abs/2305.02564",
}
"""


def is_dupmae_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a saved SentenceTransformer folder with a :class:`DupMAEPooling` module."""
    modules_file = Path(path) / "modules.json"
    if not modules_file.is_file():
        return False
    modules = json.loads(modules_file.read_text())
    return any(module.get("type") == DUPMAE_POOLING_REF for module in modules)


def load_dupmae_model(path: str | os.PathLike, **kwargs) -> SentenceTransformer:
    """Loads a saved DupMAE SentenceTransformer without ``trust_remote_code``.

    Why plain ``SentenceTransformer(path)`` cannot load it (sentence-transformers 6.2): every
    ``modules.json`` ``type`` goes through ``BaseModel._load_module_class_from_ref`` →
    ``sentence_transformers.util.misc.import_module_class``, whose only allow rule is the namespace::

        if class_ref.startswith("sentence_transformers."):
            return import_from_string(class_ref)
        if model_name_or_path is not None:
            ...
            if not trust_remote_code:
                raise ValueError(... "Please pass the argument `trust_remote_code=True` to allow custom code to be run.")

    There is no registry, entry-point group or other public hook for third-party module classes, and
    ``trust_remote_code`` cannot be set by the saved config. So a model folder can only be loaded without
    the flag if ``type`` names an importable ``sentence_transformers.*`` path. No sentence-transformers
    module computes DupMAE's representation (``SpladePooling`` max-pools MLM logits, but always through a ReLU,
    over every attended position, with no ``[CLS]`` part and no top-k), and shipping a ``sentence_transformers.*``
    module from this package (a file inside another distribution's package, or a ``.pth`` import hook
    so that it exists before ``retromae_st`` is imported) would defeat the rule that sentence-transformers
    put there on purpose and break for anyone without ``retromae_st``. Setting
    ``SentenceTransformer._module_classes`` on import would only work after ``import retromae_st`` and
    patches private state. Hence this function.

    ``SentenceTransformer(path, trust_remote_code=True)`` also loads the model (same embeddings), but that
    flag trusts more than this class: e.g. custom modeling code named by the Transformer's ``config.json``.
    Here only the ``DupMAEPooling`` entry of ``modules.json`` is resolved to this installed class (through
    ``SentenceTransformer._load_with_module_classes``, the hook sentence-transformers' own trainer uses to
    reload checkpoints of such models); any other non-sentence-transformers class still needs the flag.
    """
    loader = getattr(SentenceTransformer, "_load_with_module_classes", None)
    if loader is None:  # another sentence-transformers version: fall back to the public, explicit flag
        raise RuntimeError(
            "this sentence-transformers version cannot resolve DupMAEPooling to the installed class; load the "
            "model with SentenceTransformer(path, trust_remote_code=True) if you trust the folder"
        )
    kwargs.setdefault("model_card_data", RetroMAEModelCardData())
    return loader(str(path), {DUPMAE_POOLING_REF: DupMAEPooling}, **kwargs)


DUPMAE_POOLING_REF = f"{DupMAEPooling.__module__}.{DupMAEPooling.__qualname__}"
