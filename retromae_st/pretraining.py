"""A ready-made pre-training run: text corpus -> RetroMAE -> sentence-transformers + BertForMaskedLM folders.

Used by ``retromae-st pretrain`` and ``examples/pretrain_retromae.py``. Everything it does is ordinary
sentence-transformers training; read it as a recipe to adapt.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)

from retromae_st.data import DroppedRows, prepare_text_dataset
from retromae_st.export import load_cls_model, save_as_masked_lm
from retromae_st.length_grouped_sampler import LengthGroupedBatchSampler
from retromae_st.retromae_loss import RetroMAELoss

logger = logging.getLogger(__name__)


@dataclass
class PretrainingResult:
    model: SentenceTransformer
    loss: RetroMAELoss
    sentence_transformer_dir: str  #: plain ST folder (Transformer + CLS pooling)
    masked_lm_dir: str | None  #: *ForMaskedLM folder (+ trained decoder) to continue pre-training from
    dropped: DroppedRows


def read_text_lines(path: str) -> Dataset:
    """A ``text`` dataset with one row per line of a UTF-8 text file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"corpus file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        return Dataset.from_dict({"text": handle.read().splitlines()})


def resolve_bf16(bf16: bool | Literal["auto"], use_cpu: bool = False, fp16: bool = False) -> bool:
    """Whether to train under bf16 autocast: ``"auto"`` is on for a CUDA device that supports bf16
    (``torch.cuda.is_bf16_supported()``) and off otherwise, in particular on CPU, where bf16 speed depends
    on the CPU's instruction set (0.68x the float32 step with native bf16 matmuls, slower without them;
    see ``benchmarks/RESULTS.md``). ``True``/``False`` are kept as given. Off when ``fp16`` is asked for.
    """
    if bf16 != "auto":
        return bool(bf16)
    if fp16 or use_cpu or not torch.cuda.is_available():
        return False
    return torch.cuda.is_bf16_supported()


def length_grouped_batch_sampler(
    dataset: Dataset, model: SentenceTransformer, max_seq_length: int
) -> partial:
    """A ``batch_sampler`` for the training arguments: :class:`LengthGroupedBatchSampler` with the token
    lengths of ``dataset["text"]`` (truncated at ``max_seq_length``)."""
    lengths = LengthGroupedBatchSampler.token_lengths(dataset["text"], model.tokenizer, max_seq_length)
    return partial(LengthGroupedBatchSampler, lengths=lengths)


def pretrain(
    model_name_or_path: str,
    corpus: str | Dataset,
    output_dir: str,
    max_steps: int = 1000,
    batch_size: int = 32,
    max_seq_length: int = 256,
    learning_rate: float = 1e-4,
    encoder_mask_ratio: float = 0.3,
    decoder_mask_ratio: float = 0.5,
    warmup_ratio: float = 0.1,
    save_steps: int | None = None,
    resume_from_checkpoint: bool | str | None = None,
    seed: int = 42,
    group_by_length: bool = True,
    bf16: bool | Literal["auto"] = "auto",
    **training_kwargs,
) -> PretrainingResult:
    """Pre-trains ``model_name_or_path`` with :class:`RetroMAELoss` on ``corpus`` (a text file or a dataset
    with a ``text`` column) and writes ``output_dir/final`` (ST) and ``output_dir/masked_lm``.

    ``group_by_length`` batches texts of similar token length together (:class:`LengthGroupedBatchSampler`,
    order still random) so that batches pad less; ``False`` draws batches uniformly at random.
    ``bf16`` is the trainer's bf16 autocast; ``"auto"`` turns it on for CUDA devices with bf16 support
    only (:func:`resolve_bf16`). ``training_kwargs`` go to ``SentenceTransformerTrainingArguments``.
    """
    torch.manual_seed(seed)
    dataset = read_text_lines(corpus) if isinstance(corpus, str) else corpus
    model = load_cls_model(model_name_or_path, max_seq_length=max_seq_length)
    loss = RetroMAELoss(model, encoder_mask_ratio=encoder_mask_ratio, decoder_mask_ratio=decoder_mask_ratio)
    # Rows the loss could not learn from are dropped (and counted) here, not met hours into the run.
    dataset, dropped = prepare_text_dataset(
        dataset, tokenizer=model.tokenizer, token_rules=loss.token_rules, max_seq_length=max_seq_length
    )
    save_steps = save_steps or max(1, max_steps // 2)
    bf16 = resolve_bf16(bf16, training_kwargs.get("use_cpu", False), training_kwargs.get("fp16", False))
    if group_by_length and isinstance(dataset, Dataset) and "batch_sampler" not in training_kwargs:
        training_kwargs["batch_sampler"] = length_grouped_batch_sampler(dataset, model, max_seq_length)
    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(output_dir, "checkpoints"),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=max(1, int(max_steps * warmup_ratio)),
        weight_decay=0.01,
        logging_steps=max(1, min(100, max_steps // 10)),
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        seed=seed,
        report_to="none",
        bf16=bf16,
        **training_kwargs,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)

    final_dir = os.path.join(output_dir, "final")
    model.save(final_dir)
    masked_lm_dir = os.path.join(output_dir, "masked_lm")
    save_as_masked_lm(model, loss, masked_lm_dir)
    return PretrainingResult(model, loss, final_dir, masked_lm_dir, dropped)
