"""LengthGroupedBatchSampler: a permutation per epoch, homogeneous batches, inside the ST trainer;
the bf16 default of ``pretrain``."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from retromae_st import LengthGroupedBatchSampler, RetroMAELoss, load_cls_model
from retromae_st.pretraining import resolve_bf16


def mixed_lengths(n: int, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, 256, (n,), generator=generator).tolist()


def sampler(lengths, batch_size=8, drop_last=False, seed=3, **kwargs) -> LengthGroupedBatchSampler:
    dataset = Dataset.from_dict({"text": ["x" * length for length in lengths]})
    return LengthGroupedBatchSampler(
        dataset, batch_size, drop_last, generator=torch.Generator(), seed=seed, **kwargs
    )


def padded_tokens(batches, lengths) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


@pytest.mark.parametrize("n", [1, 7, 8, 203, 1000])
def test_every_index_once_per_epoch(n):
    lengths = mixed_lengths(n)
    batch_sampler = sampler(lengths)
    for epoch in range(2):
        batch_sampler.set_epoch(epoch)
        batches = list(batch_sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(n))
        assert len(batches) == len(batch_sampler)
        assert sum(len(batch) < 8 for batch in batches) == (1 if n % 8 else 0)


def test_drop_last_drops_only_the_incomplete_batch():
    lengths = mixed_lengths(203)
    batches = list(sampler(lengths, drop_last=True))
    assert len(batches) == 203 // 8 == len(sampler(lengths, drop_last=True))
    assert all(len(batch) == 8 for batch in batches)
    assert len({i for batch in batches for i in batch}) == 200


def test_batches_are_more_homogeneous_than_random():
    lengths = mixed_lengths(2000)
    grouped = list(sampler(lengths, batch_size=16))
    generator = torch.Generator().manual_seed(0)
    random = torch.randperm(2000, generator=generator).split(16)
    random = [batch.tolist() for batch in random]
    spread = lambda batches: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert spread(grouped) < 0.2 * spread(random)
    assert padded_tokens(grouped, lengths) < 0.75 * padded_tokens(random, lengths)


def test_order_is_random_but_reproducible():
    lengths = mixed_lengths(500)
    first = sampler(lengths, seed=1)
    again = sampler(lengths, seed=1)
    assert list(first) == list(again)  # same seed and epoch: same order on every process
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    assert list(sampler(lengths, seed=2)) != epoch0
    # batch order is shuffled: batch lengths are not sorted across the epoch
    maxima = [max(lengths[i] for i in batch) for batch in epoch0]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_character_lengths_are_the_default_and_labels_do_not_count():
    dataset = Dataset.from_dict({"anchor": ["ab", "abcd"], "positive": ["a", ""], "label": ["xxxxxx", "y"]})
    assert LengthGroupedBatchSampler.character_lengths(dataset, ["label"]) == [3, 4]
    batch_sampler = LengthGroupedBatchSampler(dataset, 2, False, valid_label_columns=["label"])
    assert batch_sampler.lengths.tolist() == [3, 4]
    with pytest.raises(ValueError, match="lengths"):
        LengthGroupedBatchSampler(dataset, 2, False, lengths=[1, 2, 3])


def test_token_lengths(tokenizer):
    texts = ["a short one", "a much longer text " * 20]
    lengths = LengthGroupedBatchSampler.token_lengths(texts, tokenizer, max_length=32, chunk_size=1)
    assert lengths == [5, 32]


def test_works_inside_the_sentence_transformers_trainer(tiny_bert_dir, sample_texts, tmp_path, tokenizer):
    texts = sample_texts[:64]
    torch.manual_seed(0)
    model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    lengths = LengthGroupedBatchSampler.token_lengths(texts, tokenizer, 32)
    seen = []

    def recording_sampler(*args, **kwargs):
        batch_sampler = LengthGroupedBatchSampler(*args, lengths=lengths, **kwargs)
        seen.append(batch_sampler)
        return batch_sampler

    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=8,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        batch_sampler=recording_sampler,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}), loss=RetroMAELoss(model)
    )
    trainer.train()
    assert seen and trainer.state.global_step == 3
    assert all(
        torch.isfinite(torch.tensor(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry
    )


def test_pretrain_groups_by_length_by_default(tiny_bert_dir, sample_texts, tmp_path, monkeypatch):
    from retromae_st import pretraining

    built = []
    original = pretraining.length_grouped_batch_sampler
    monkeypatch.setattr(
        pretraining,
        "length_grouped_batch_sampler",
        lambda *args: built.append(original(*args)) or built[-1],
    )
    dataset = Dataset.from_dict({"text": sample_texts[:32]})
    common = dict(max_steps=1, batch_size=8, max_seq_length=32, disable_tqdm=True, pack=False)
    pretraining.pretrain(str(tiny_bert_dir), dataset, str(tmp_path / "a"), **common)
    assert len(built) == 1 and isinstance(built[0], partial)
    pretraining.pretrain(str(tiny_bert_dir), dataset, str(tmp_path / "b"), group_by_length=False, **common)
    assert len(built) == 1


def test_bf16_decision(monkeypatch):
    assert resolve_bf16(True) is True
    assert resolve_bf16(False) is False
    assert resolve_bf16(True, use_cpu=True) is True  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_bf16("auto") is False  # CPU: off unless asked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_bf16("auto") is True
    assert resolve_bf16("auto", use_cpu=True) is False
    assert resolve_bf16("auto", fp16=True) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_bf16("auto") is False
