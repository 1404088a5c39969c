"""Tiny random checkpoints of each supported encoder family, built offline in seconds.

Each family gets a tokenizer trained here with the ``tokenizers`` library on the sample corpus (WordPiece
for BERT, byte-level BPE for RoBERTa, Unigram/Metaspace for XLM-RoBERTa, byte-level BPE with BERT-style
special tokens for ModernBERT) and a 2-layer, 64-wide ``*ForMaskedLM`` (or base model) from a config.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tests.conftest import SAMPLE_CORPUS

FAMILIES = ("bert", "roberta", "xlm-roberta", "modernbert", "deberta-v2")

#: Words of the distributed test's texts, so that they are single tokens in every vocabulary.
EXTRA_TEXT = (
    "the cat sat on the mat by the door a dog ran in the park all day long we read a good book about the deep "
    "sea she went to the shop to buy some milk the sun is hot and the sky is blue they play loud music in the "
    "city at night he likes to walk with his very old friend our team won the game in the last minute "
    "中文 北京 我们 东京 日本語 café naïve"
)

BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
ROBERTA_SPECIALS = {
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "cls_token": "<s>",
    "sep_token": "</s>",
}


def corpus_lines(limit: int = 600) -> list[str]:
    with open(SAMPLE_CORPUS, encoding="utf-8") as handle:
        lines = [line.strip()[:400] for line in handle if line.strip()]
    return lines[:limit] + [EXTRA_TEXT] * 20


def _wordpiece() -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(
        corpus_lines(), trainers.WordPieceTrainer(vocab_size=1200, special_tokens=specials)
    )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tokenizer


def _byte_level_bpe(specials: list[str], cls: str, sep: str, add_prefix_space: bool = False) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} {sep} $B {sep}",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    return tokenizer


def _unigram_metaspace(prepend_scheme: str = "always") -> Tokenizer:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend_scheme)
    tokenizer.decoder = decoders.Metaspace(prepend_scheme=prepend_scheme)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=1200, special_tokens=specials, unk_token="<unk>")
    tokenizer.train_from_iterator(corpus_lines(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tokenizer.token_to_id("<s>")), ("</s>", tokenizer.token_to_id("</s>"))],
    )
    return tokenizer


@functools.cache
def family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The trained tokenizer of ``family`` (cached: training takes a few seconds)."""
    if family in ("bert", "deberta-v2"):
        backend, specials = _wordpiece(), BERT_SPECIALS
    elif family == "roberta":
        backend = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s>", "</s>")
        specials = ROBERTA_SPECIALS
    elif family == "xlm-roberta":
        backend, specials = _unigram_metaspace(), ROBERTA_SPECIALS
    elif family == "modernbert":
        backend = _byte_level_bpe(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"], "[CLS]", "[SEP]")
        specials = BERT_SPECIALS
    else:
        raise ValueError(f"unknown family {family!r}")
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=126, **specials)


def family_config(family: str, tokenizer: PreTrainedTokenizerFast):
    """A 2-layer, 64-wide config of ``family`` for ``tokenizer``."""
    from transformers import BertConfig, DebertaV2Config, ModernBertConfig, RobertaConfig, XLMRobertaConfig

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family == "bert":
        return BertConfig(**common, max_position_embeddings=128)
    if family == "deberta-v2":
        # The legacy layout (BERT's cls.predictions head) with absolute positions added to the input.
        return DebertaV2Config(**common, max_position_embeddings=128, legacy=True, position_biased_input=True)
    if family in ("roberta", "xlm-roberta"):
        config_class = RobertaConfig if family == "roberta" else XLMRobertaConfig
        return config_class(
            **common,
            max_position_embeddings=130,  # positions count from pad_token_id + 1
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    if family == "modernbert":
        return ModernBertConfig(
            **common,
            max_position_embeddings=128,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            global_attn_every_n_layers=1,
            attn_implementation="sdpa",
        )
    raise ValueError(f"unknown family {family!r}")


def build_family_checkpoint(family: str, directory: Path, with_mlm_head: bool = True, seed: int = 0) -> Path:
    """Saves a tiny random ``*ForMaskedLM`` of ``family`` (or its base model) with its tokenizer."""
    from transformers import AutoModel, AutoModelForMaskedLM

    tokenizer = family_tokenizer(family)
    config = family_config(family, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_config(config) if with_mlm_head else AutoModel.from_config(config)
    if with_mlm_head:
        # A random head whose biases are not all zero, so that a test can tell a loaded head from a new one.
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if not name.startswith(model.base_model_prefix + "."):
                    parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def byte_fallback_bpe() -> PreTrainedTokenizerFast:
    """A Llama-style tokenizer: BPE over Metaspace pieces with SentencePiece's byte fallback (``<0xNN>``
    pieces for characters outside the vocabulary), no prefix space before a text's first word."""
    import json

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<mask>"]
    backend.train_from_iterator(
        corpus_lines(200), trainers.BpeTrainer(vocab_size=600, special_tokens=specials)
    )
    spec = json.loads(backend.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **ROBERTA_SPECIALS)


def metaspace_without_prefix() -> PreTrainedTokenizerFast:
    """XLM-R's Unigram/Metaspace tokenizer, but without the ``▁`` before a text's first word."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_unigram_metaspace(prepend_scheme="never"), **ROBERTA_SPECIALS
    )
