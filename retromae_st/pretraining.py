"""Ready-made training runs: :func:`pretrain` (RetroMAE / DupMAE on a text corpus) and :func:`stage2`
(RetroMAE + contrastive learning on query-passage pairs / NLI triplets, several datasets in one run).

Used by ``retromae-st pretrain`` / ``retromae-st stage2`` (a thin layer over these functions) and the
examples. Everything they do is ordinary sentence-transformers training; read them as recipes to adapt.
Both check everything they can before the first step (output folder, ``max_seq_length``, resume
checkpoint and its settings) and store the run's settings in every checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from datasets import Dataset, DatasetDict, IterableDataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)

from retromae_st.checkpointing import LossStateCallback
from retromae_st.corpora import expand_corpus_paths, read_contrastive_file, stream_corpus
from retromae_st.data import DroppedRows, clean_text_stream, prepare_contrastive_dataset, prepare_text_dataset
from retromae_st.dupmae_loss import DupMAELoss, build_dupmae_model
from retromae_st.export import load_cls_model, save_as_masked_lm
from retromae_st.length_grouped_sampler import LengthGroupedBatchSampler
from retromae_st.model_card import name_training_data
from retromae_st.retromae_contrastive_loss import RetroMAEContrastiveLoss
from retromae_st.retromae_loss import RetroMAELoss
from retromae_st.runs import (
    check_max_seq_length,
    check_output_dir,
    check_resume_settings,
    choose_resume_checkpoint,
)

logger = logging.getLogger(__name__)

METHODS = ("retromae", "dupmae")
#: The sub-folders a run writes into its output folder (``overwrite`` deletes these, nothing else).
RUN_FOLDERS = ("checkpoints", "final", "masked_lm", "dupmae", "init")
#: Our defaults for training arguments that the caller does not set (a caller's value always wins).
RECIPE_TRAINING_DEFAULTS: dict[str, Any] = {
    "weight_decay": 0.01,
    "save_strategy": "steps",
    "save_total_limit": 2,
    "report_to": "none",
}
#: Training arguments whose recipe default depends on ``max_steps`` (see :func:`training_arguments`).
STEP_DEPENDENT_DEFAULTS = {
    "warmup_steps": "warmup_ratio x max_steps",
    "logging_steps": "max_steps / 10, at most 100",
    "save_steps": "max_steps / 2",
}
MODEL_SHAPE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)


@dataclass
class PretrainingResult:
    model: SentenceTransformer
    loss: RetroMAELoss | dict[str, RetroMAEContrastiveLoss]
    sentence_transformer_dir: str  #: plain ST folder (Transformer + CLS pooling)
    masked_lm_dir: str | None  #: masked-LM folder (encoder + MLM head) to continue pre-training from
    dropped: (
        DroppedRows | dict[str, DroppedRows] | None
    )  #: rows dropped by cleaning (the packer's count when packed)
    dupmae_dir: str | None = None  #: Transformer + DupMAEPooling folder (method="dupmae")
    packing: Any = None  #: the packer's statistics (``pack=True``)
    resumed_from: str | None = None  #: the checkpoint the run continued from


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


def training_arguments(
    output_dir: str,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    bf16: bool | Literal["auto"],
    warmup_ratio: float,
    save_steps: int | float | None,
    training_kwargs: Mapping[str, Any],
) -> SentenceTransformerTrainingArguments:
    """The recipe's ``SentenceTransformerTrainingArguments``; every key of ``training_kwargs`` wins
    over the recipe's value for it. ``save_total_limit`` below 2 is raised to 2: the trainer deletes
    older checkpoints before the newest one is complete, so one kept checkpoint can leave none."""
    values: dict[str, Any] = {
        **RECIPE_TRAINING_DEFAULTS,
        "max_steps": max_steps,
        "per_device_train_batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "warmup_steps": max(1, int(max_steps * warmup_ratio)),
        "logging_steps": max(1, min(100, max_steps // 10)),
        "save_steps": save_steps or max(1, max_steps // 2),
        **training_kwargs,
        "output_dir": os.path.join(output_dir, "checkpoints"),
    }
    values["bf16"] = resolve_bf16(
        training_kwargs.get("bf16", bf16), values.get("use_cpu", False), values.get("fp16", False)
    )
    limit = values.get("save_total_limit")
    if limit is not None and limit < 2:
        logger.warning(
            "save_total_limit=%s raised to 2: with fewer, a run killed while saving can be left without "
            "a complete checkpoint to resume from",
            limit,
        )
        values["save_total_limit"] = 2
    return SentenceTransformerTrainingArguments(**values)


def build_start_model(
    model_name_or_path: str | None,
    config: str | None,
    tokenizer: str | None,
    max_seq_length: int,
    init_dir: str,
    seed: int,
) -> SentenceTransformer:
    """The CLS-pooled model to train: from a checkpoint (``model_name_or_path``), or randomly
    initialised from a model ``config`` (a ``config.json`` or its folder) and a ``tokenizer``, saved to
    ``init_dir`` first (as the authors' ``run.py`` offers with ``--config_name --tokenizer_name``)."""
    if model_name_or_path is not None:
        if config is not None or tokenizer is not None:
            raise ValueError(
                "config/tokenizer (--config/--tokenizer) start from random weights: give them without "
                "model_name_or_path (--model)"
            )
        return load_cls_model(model_name_or_path, max_seq_length=max_seq_length)
    if config is None or tokenizer is None:
        raise ValueError(
            "give model_name_or_path (--model), or both config and tokenizer (--config, --tokenizer) "
            "to start from random weights"
        )
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    for name, path in (("config (--config)", config), ("tokenizer (--tokenizer)", tokenizer)):
        if os.path.sep in os.fspath(path) and not os.path.exists(path):
            raise FileNotFoundError(f"{name}: {path} does not exist")
    model_config = AutoConfig.from_pretrained(config)
    start_tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if len(start_tokenizer) > model_config.vocab_size:
        raise ValueError(
            f"the tokenizer {tokenizer} has {len(start_tokenizer)} tokens but the config's vocab_size is "
            f"{model_config.vocab_size}"
        )
    torch.manual_seed(seed)
    initial = AutoModel.from_config(model_config)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun: the same weights, kept out of rank 0's way
        with tempfile.TemporaryDirectory() as own_dir:
            initial.save_pretrained(own_dir)
            start_tokenizer.save_pretrained(own_dir)
            return load_cls_model(own_dir, max_seq_length=max_seq_length)
    initial.save_pretrained(init_dir)
    start_tokenizer.save_pretrained(init_dir)
    return load_cls_model(init_dir, max_seq_length=max_seq_length)


def pretraining_loss(
    method: str,
    model: SentenceTransformer,
    encoder_mask_ratio: float,
    decoder_mask_ratio: float,
    bow_loss_weight: float,
    token_rules: str = "authors",
) -> RetroMAELoss:
    ratios = {"encoder_mask_ratio": encoder_mask_ratio, "decoder_mask_ratio": decoder_mask_ratio}
    if method == "retromae":
        return RetroMAELoss(model, **ratios, token_rules=token_rules)
    if method == "dupmae":
        return DupMAELoss(model, **ratios, bow_loss_weight=bow_loss_weight, token_rules=token_rules)
    raise ValueError(f"method (--method) must be one of {METHODS}, got {method!r}")


def pretraining_dataset(
    corpus: str | Sequence[str] | Dataset | IterableDataset,
    tokenizer,
    max_seq_length: int,
    pack: bool,
    text_field: str,
    shuffle_buffer_size: int,
    seed: int,
    token_rules: str = "authors",
) -> tuple[Dataset | IterableDataset, DroppedRows | None, Any]:
    """The training rows: files are streamed (:func:`retromae_st.corpora.stream_corpus`), then packed
    into ``max_seq_length`` blocks (``pack``) or cleaned one line per example. Returns the dataset, the
    dropped-rows count (unpacked) and the packing statistics (packed)."""
    if isinstance(corpus, (Dataset, IterableDataset)):
        raw = corpus
        if text_field != "text":
            raw = raw.rename_column(text_field, "text")
    else:
        raw = stream_corpus(corpus, text_field=text_field, keep_blank_lines=pack)
    if pack:
        from retromae_st.packing import pack_corpus

        columns = raw.column_names or []
        document_column = "document_id" if "document_id" in columns else None
        dataset, stats = pack_corpus(raw, tokenizer, max_seq_length, document_column=document_column)
        dropped = stats.dropped  # the packer cleans the rows itself
    else:
        # Rows the loss could not learn from are dropped (and counted) here, not met hours into the run.
        rules = {"tokenizer": tokenizer, "token_rules": token_rules, "max_seq_length": max_seq_length}
        clean = prepare_text_dataset if isinstance(raw, Dataset) else clean_text_stream
        dataset, dropped = clean(raw, **rules)
        stats = None
    if isinstance(dataset, IterableDataset) and shuffle_buffer_size:
        # A stream comes in file order and the trainer shuffles only in-memory datasets: shuffle the
        # examples (blocks or lines, after packing) in a buffer, reproducibly (seed + epoch).
        dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    return dataset, dropped, stats


def model_shape(model: SentenceTransformer) -> dict[str, Any]:
    config = model[0].auto_model.config
    return {key: getattr(config, key, None) for key in MODEL_SHAPE_KEYS}


def run_settings(
    method: str, losses: Mapping[str, Any], model: SentenceTransformer, args, max_seq_length: int, **extra
) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint it continues (stored in every checkpoint)."""
    return {
        "method": method,
        "losses": {
            name: {"class": type(loss).__name__, **loss.get_config_dict()} for name, loss in losses.items()
        },
        "model": model_shape(model),
        "max_seq_length": max_seq_length,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "world_size": args.world_size,
        "seed": args.seed,
        **extra,
    }


def train_with_checks(
    model: SentenceTransformer,
    loss,
    dataset,
    args: SentenceTransformerTrainingArguments,
    settings: dict[str, Any],
    resume_from_checkpoint: bool | str | None,
    force: bool,
) -> tuple[SentenceTransformerTrainer, str | None]:
    """Chooses the checkpoint to resume from, checks its settings, trains; returns the trainer and the
    checkpoint it resumed from."""
    checkpoint = choose_resume_checkpoint(args.output_dir, resume_from_checkpoint)
    if checkpoint is not None:
        check_resume_settings(checkpoint, settings, force)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.add_callback(LossStateCallback(trainer, run_settings=settings))
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer, checkpoint


def save_outputs(
    trainer: SentenceTransformerTrainer, mae_loss: RetroMAELoss, output_dir: str, dupmae_top_k: int
) -> tuple[str, str, str | None]:
    """Writes (on the main process only) ``final/`` (ST, CLS pooling), ``masked_lm/`` (encoder + MLM
    head) and, for DupMAE, ``dupmae/`` (Transformer + DupMAEPooling)."""
    final_dir = os.path.join(output_dir, "final")
    masked_lm_dir = os.path.join(output_dir, "masked_lm")
    dupmae_dir = os.path.join(output_dir, "dupmae") if isinstance(mae_loss, DupMAELoss) else None
    if trainer.is_world_process_zero():
        trainer.model.save(final_dir)
        save_as_masked_lm(trainer.model, mae_loss, masked_lm_dir)
        if dupmae_dir is not None:
            build_dupmae_model(mae_loss, top_k=dupmae_top_k).save(dupmae_dir)
    return final_dir, masked_lm_dir, dupmae_dir


def pretrain(
    model_name_or_path: str | None,
    corpus: str | Sequence[str] | Dataset | IterableDataset,
    output_dir: str,
    *,
    method: Literal["retromae", "dupmae"] = "retromae",
    max_steps: int = 1000,
    batch_size: int = 32,
    max_seq_length: int = 256,
    learning_rate: float = 1e-4,
    encoder_mask_ratio: float = 0.3,
    decoder_mask_ratio: float = 0.5,
    bow_loss_weight: float = 0.1,
    dupmae_top_k: int = 256,
    token_rules: str = "authors",
    warmup_ratio: float = 0.1,
    save_steps: int | float | None = None,
    resume_from_checkpoint: bool | str | None = None,
    seed: int = 42,
    group_by_length: bool | None = None,
    bf16: bool | Literal["auto"] = "auto",
    pack: bool = True,
    text_field: str = "text",
    shuffle_buffer_size: int = 10_000,
    config: str | None = None,
    tokenizer: str | None = None,
    overwrite: bool = False,
    force: bool = False,
    **training_kwargs,
) -> PretrainingResult:
    """Pre-trains with :class:`RetroMAELoss` (``method="retromae"``) or :class:`DupMAELoss`
    (``"dupmae"``) on ``corpus`` and writes ``output_dir/final`` (ST, CLS pooling),
    ``output_dir/masked_lm`` (encoder + MLM head), for DupMAE ``output_dir/dupmae`` (Transformer +
    DupMAEPooling), and checkpoints in ``output_dir/checkpoints``.

    Args:
        model_name_or_path: Starting checkpoint (folder or hub id); ``None`` with ``config`` and
            ``tokenizer`` starts from random weights.
        corpus: Corpus files, ``datasets`` folders or glob patterns (``.txt`` with blank-line documents,
            ``.jsonl``/``.parquet`` with ``text_field``; see :mod:`retromae_st.corpora`), streamed; or a
            ``Dataset``/``IterableDataset`` with a ``text`` column (and optionally ``document_id``).
        pack: Pack consecutive sentences of a document into ``max_seq_length`` blocks, as the authors'
            preprocessing does (:func:`retromae_st.packing.pack_corpus`); ``False`` trains one cleaned
            line per example.
        text_field: The text's field in ``.jsonl`` / column in ``.parquet`` and ``datasets`` folders.
        shuffle_buffer_size: A streamed corpus is shuffled in a buffer of this many examples (``0``: read in
            file order); in-memory datasets are shuffled by the trainer.
        group_by_length: Batch texts of similar token length (:class:`LengthGroupedBatchSampler`; in-memory
            datasets only). Default: on for an unpacked in-memory dataset, off otherwise.
        bf16: bf16 autocast; ``"auto"`` is on for CUDA devices with bf16 support only (:func:`resolve_bf16`).
        token_rules: The loss's token rules (``"authors"`` or ``"skip_special"``, see :class:`RetroMAELoss`).
        resume_from_checkpoint: ``True``: the newest *complete* checkpoint in ``output_dir/checkpoints``;
            a path: that checkpoint. The settings stored in it must equal this run's unless ``force``.
        overwrite: Allow a fresh run into a non-empty ``output_dir`` (deletes the earlier run's folders).
        training_kwargs: Any ``SentenceTransformerTrainingArguments`` field; each wins over the recipe's
            value (``save_total_limit`` below 2 is raised to 2).

    Raises:
        ValueError / FileExistsError / FileNotFoundError: before training, naming the argument at fault.
    """
    if method not in METHODS:
        raise ValueError(f"method (--method) must be one of {METHODS}, got {method!r}")
    if "per_device_train_batch_size" in training_kwargs:
        batch_size = training_kwargs.pop("per_device_train_batch_size")
    if not isinstance(corpus, (Dataset, IterableDataset)):
        corpus = expand_corpus_paths(corpus)  # a mistyped path fails before --overwrite deletes anything
    check_output_dir(output_dir, bool(resume_from_checkpoint), overwrite, RUN_FOLDERS)
    torch.manual_seed(seed)
    init_dir = os.path.join(output_dir, "init")
    model = build_start_model(model_name_or_path, config, tokenizer, max_seq_length, init_dir, seed)
    check_max_seq_length(max_seq_length, model[0].auto_model.config, model.tokenizer)
    name_training_data(model, corpus)
    loss = pretraining_loss(
        method, model, encoder_mask_ratio, decoder_mask_ratio, bow_loss_weight, token_rules
    )
    dataset, dropped, packing = pretraining_dataset(
        corpus, model.tokenizer, max_seq_length, pack, text_field, shuffle_buffer_size, seed, token_rules
    )
    loss.warn_on_full_length = not pack  # packed blocks fill max_seq_length exactly, nothing is cut
    if group_by_length is None:
        group_by_length = not pack and isinstance(dataset, Dataset)
    if group_by_length and "batch_sampler" not in training_kwargs:
        if not isinstance(dataset, Dataset):
            raise ValueError(
                "group_by_length (--group-by-length) needs an in-memory dataset, not a streamed one"
            )
        training_kwargs["batch_sampler"] = length_grouped_batch_sampler(dataset, model, max_seq_length)
    if isinstance(dataset, IterableDataset) and "accelerator_config" not in training_kwargs:
        # Several processes: each reads the stream and keeps its own share of the batches. Accelerate's
        # default for streams (rank 0 reads and sends out the batches) fails on batches padded to
        # different lengths.
        training_kwargs["accelerator_config"] = {"dispatch_batches": False}
    args = training_arguments(
        output_dir,
        max_steps,
        batch_size,
        learning_rate,
        seed,
        bf16,
        warmup_ratio,
        save_steps,
        training_kwargs,
    )
    settings = run_settings(method, {"loss": loss}, model, args, max_seq_length, pack=pack)
    trainer, resumed_from = train_with_checks(
        model, loss, dataset, args, settings, resume_from_checkpoint, force
    )
    final_dir, masked_lm_dir, dupmae_dir = save_outputs(trainer, loss, output_dir, dupmae_top_k)
    return PretrainingResult(
        model, loss, final_dir, masked_lm_dir, dropped, dupmae_dir, packing, resumed_from
    )


def stage2_datasets(
    datasets: Mapping[str, str | Dataset] | Sequence[str], columns: Mapping[str, Sequence[str]] | None
) -> tuple[DatasetDict, dict[str, DroppedRows]]:
    """Named, cleaned (anchor, positive[, negative...]) datasets from files / folders / ``Dataset``\\ s
    (a list of paths is named by the file stems)."""
    if not isinstance(datasets, Mapping):
        datasets = {
            os.path.splitext(os.path.basename(os.fspath(path).rstrip("/")))[0]: path for path in datasets
        }
    if not datasets:
        raise ValueError("datasets (--data) is empty: give at least one (query, passage) or NLI triplet file")
    prepared, dropped = {}, {}
    for name, source in datasets.items():
        chosen = (columns or {}).get(name)
        if isinstance(source, Dataset):
            raw = source.select_columns(list(chosen)) if chosen else source
        else:
            raw = read_contrastive_file(source, chosen)
        prepared[name], dropped[name] = prepare_contrastive_dataset(raw)
    return DatasetDict(prepared), dropped


def stage2(
    model_name_or_path: str,
    datasets: Mapping[str, str | Dataset] | Sequence[str],
    output_dir: str,
    *,
    mae_method: Literal["retromae", "dupmae"] = "retromae",
    mae_columns: str | Mapping[str, str] = "all",
    columns: Mapping[str, Sequence[str]] | None = None,
    mae_weight: float = 1.0,
    contrastive_weight: float = 1.0,
    scale: float = 20.0,
    max_steps: int = 1000,
    batch_size: int = 32,
    max_seq_length: int = 256,
    learning_rate: float = 1e-4,
    encoder_mask_ratio: float = 0.3,
    decoder_mask_ratio: float = 0.5,
    bow_loss_weight: float = 0.1,
    dupmae_top_k: int = 256,
    token_rules: str = "authors",
    warmup_ratio: float = 0.1,
    save_steps: int | float | None = None,
    resume_from_checkpoint: bool | str | None = None,
    seed: int = 42,
    bf16: bool | Literal["auto"] = "auto",
    overwrite: bool = False,
    force: bool = False,
    **training_kwargs,
) -> PretrainingResult:
    """Stage 2 of the two-stage recipe: :class:`RetroMAEContrastiveLoss` on one or several
    (anchor, positive[, negative...]) datasets at once (sentence-transformers multi-dataset training),
    one MAE decoder shared by all of them, as ``examples/two_stage.py`` does.

    Args:
        model_name_or_path: The stage-1 result, ideally its ``masked_lm/`` export (its MLM head is reused).
        datasets: ``{name: path or Dataset}`` (``.tsv`` with a header, ``.jsonl``, ``datasets`` folder), or
            a list of paths named by their stems. Every column is a text (anchor, positive, negatives).
        mae_columns: The MAE term's texts: ``"all"``, ``"documents"`` (all but the anchor: skips search
            queries), ``"anchor"``; one value for all datasets or ``{name: value}`` (default ``"all"``).
        columns: ``{name: [columns]}`` to use only (and order) some columns of a dataset.
        mae_weight, contrastive_weight, scale: as in :class:`RetroMAEContrastiveLoss`.
        training_kwargs: Any ``SentenceTransformerTrainingArguments`` field (wins over the recipe's value;
            the recipe uses ``batch_sampler="no_duplicates"`` and ``dataloader_drop_last=True``).

    Other arguments as in :func:`pretrain`. Writes ``final/``, ``masked_lm/`` (and ``dupmae/``).
    """
    if "per_device_train_batch_size" in training_kwargs:
        batch_size = training_kwargs.pop("per_device_train_batch_size")
    train, dropped = stage2_datasets(datasets, columns)  # bad data fails before --overwrite deletes anything
    check_output_dir(output_dir, bool(resume_from_checkpoint), overwrite, RUN_FOLDERS)
    torch.manual_seed(seed)
    model = load_cls_model(model_name_or_path, max_seq_length=max_seq_length)
    check_max_seq_length(max_seq_length, model[0].auto_model.config, model.tokenizer)
    mae = pretraining_loss(
        mae_method, model, encoder_mask_ratio, decoder_mask_ratio, bow_loss_weight, token_rules
    )
    unknown = set(mae_columns) - set(train) if isinstance(mae_columns, Mapping) else set()
    if unknown:
        raise ValueError(
            f"mae_columns (--mae-columns) names unknown datasets {sorted(unknown)}; datasets: {list(train)}"
        )
    losses = {
        name: RetroMAEContrastiveLoss(
            model,
            mae,
            mae_weight=mae_weight,
            contrastive_weight=contrastive_weight,
            scale=scale,
            mae_columns=mae_columns.get(name, "all") if isinstance(mae_columns, Mapping) else mae_columns,
        )
        for name in train
    }
    recipe = {"batch_sampler": "no_duplicates", "dataloader_drop_last": True}
    args = training_arguments(
        output_dir,
        max_steps,
        batch_size,
        learning_rate,
        seed,
        bf16,
        warmup_ratio,
        save_steps,
        {**recipe, **training_kwargs},
    )
    settings = run_settings(
        f"stage2-{mae_method}", losses, model, args, max_seq_length, datasets=sorted(train)
    )
    trainer, resumed_from = train_with_checks(
        model, losses, train, args, settings, resume_from_checkpoint, force
    )
    final_dir, masked_lm_dir, dupmae_dir = save_outputs(trainer, mae, output_dir, dupmae_top_k)
    return PretrainingResult(model, losses, final_dir, masked_lm_dir, dropped, dupmae_dir, None, resumed_from)
