"""A batch sampler for sentence-transformers that puts texts of similar length in the same batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from datasets import Dataset
from sentence_transformers.base.sampler import DefaultBatchSampler


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """
    Batch sampler that groups texts of similar length into the same batch, so that a batch pads less.

    Like :class:`transformers.trainer_pt_utils.LengthGroupedSampler`: every epoch the indices are shuffled,
    cut into megabatches of ``megabatch_multiplier * batch_size`` indices, and each megabatch is sorted by
    length and cut into batches. The batches are then shuffled, so the order of the batches (and which
    texts meet in a megabatch) is still random, while each batch holds texts of similar length. Every
    index appears exactly once per epoch; only the last batch can be smaller than ``batch_size`` (dropped
    with ``drop_last``).

    With :class:`~retromae_st.RetroMAELoss` and :class:`~retromae_st.DupMAELoss`, a padded position costs
    encoder and decoder time but no MLM-head time (it carries no label), so the saving is in the encoder
    and decoder (see ``benchmarks/RESULTS.md``).

    The order depends only on ``seed`` and the epoch (set by the trainer through ``set_epoch``), so it is
    the same on every process: under DDP, Accelerate gives each process its own share of the batches, as
    for the samplers of sentence-transformers.

    Pass the class (it then measures lengths in characters) or a :func:`functools.partial` of it with
    ``lengths`` as ``batch_sampler`` in
    :class:`~sentence_transformers.sentence_transformer.training_args.SentenceTransformerTrainingArguments`.

    Args:
        dataset (Dataset): The dataset to sample from.
        batch_size (int): Number of samples per batch.
        drop_last (bool): If True, drop the last incomplete batch if the dataset size
            is not divisible by the batch size.
        valid_label_columns (List[str], optional): Label columns; they do not count towards a row's length.
        generator (torch.Generator, optional): Random number generator for the shuffles.
        seed (int): Seed for the random number generator; the shuffles of epoch ``e`` use ``seed + e``.
            Defaults to 0.
        lengths (Sequence[int], optional): The length of every row of ``dataset``, e.g. its number of
            tokens (:meth:`token_lengths`). Defaults to the number of characters in the row's text columns.
        megabatch_multiplier (int): Batches per megabatch: the larger, the more homogeneous the batches,
            the smaller, the more random. Capped so that a dataset has at least 4 megabatches where it
            can. Defaults to 50, as in ``transformers``.

    Example:
        ::

            from functools import partial

            from sentence_transformers import SentenceTransformerTrainingArguments
            from retromae_st import LengthGroupedBatchSampler

            lengths = LengthGroupedBatchSampler.token_lengths(train_dataset["text"], model.tokenizer, 256)
            args = SentenceTransformerTrainingArguments(
                output_dir="checkpoints",
                batch_sampler=partial(LengthGroupedBatchSampler, lengths=lengths),
            )
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
        megabatch_multiplier: int = 50,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        if lengths is None:
            lengths = self.character_lengths(dataset, valid_label_columns)
        if len(lengths) != len(dataset):
            raise ValueError(f"got {len(lengths)} lengths for a dataset of {len(dataset)} rows")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.megabatch_size = batch_size * max(1, min(megabatch_multiplier, len(dataset) // (4 * batch_size)))

    @staticmethod
    def character_lengths(dataset: Dataset, label_columns: list[str] | None = None) -> list[int]:
        """The number of characters in each row's string columns (label columns left out)."""
        columns = [
            name
            for name, feature in dataset.features.items()
            if getattr(feature, "dtype", None) in ("string", "large_string")
            and name not in (label_columns or [])
        ]
        if not columns:
            raise ValueError(f"no text column to measure lengths in among {dataset.column_names}")
        totals = [0] * len(dataset)
        for name in columns:
            totals = [total + len(text or "") for total, text in zip(totals, dataset[name], strict=True)]
        return totals

    @staticmethod
    def token_lengths(
        texts: Sequence[str], tokenizer, max_length: int, chunk_size: int = 10_000
    ) -> list[int]:
        """The number of tokens (special tokens included, truncated at ``max_length``) of each text."""
        lengths = []
        for start in range(0, len(texts), chunk_size):
            encoded = tokenizer(
                list(texts[start : start + chunk_size]), truncation=True, max_length=max_length
            )
            lengths += [len(ids) for ids in encoded["input_ids"]]
        return lengths

    def __iter__(self) -> Iterator[list[int]]:
        if self.generator is not None and self.seed is not None:
            self.generator.manual_seed(self.seed + self.epoch)
        indices = torch.randperm(len(self.lengths), generator=self.generator)
        batches = []
        for megabatch in indices.split(self.megabatch_size):
            # stable sort: equal lengths keep their random order
            order = torch.sort(self.lengths[megabatch], descending=True, stable=True).indices
            batches += [batch.tolist() for batch in megabatch[order].split(self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        for position in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[position]

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.lengths) // self.batch_size
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size
