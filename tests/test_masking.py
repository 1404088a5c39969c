"""Masking: properties (hypothesis) and statistical equivalence with the authors' collator."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.reference_retromae import ReferenceRetroMAECollator
from retromae_st.masking import (
    TOKEN_RULES,
    bert_mask_replacement,
    boundary_token_table,
    choose_whole_words,
    decoder_attention_mask,
    decoder_targets,
    mask_budget,
    maskable_tokens,
    retromae_masks,
    special_token_table,
    visiting_order,
    whole_word_mask,
    word_index,
    word_lengths,
    word_start_table,
    word_tokens,
)

WORDS = [
    "the",
    "cat",
    "unbelievable",
    "tokenization",
    "of",
    "retrieval",
    "embeddings",
    "x",
    "supercalifragilistic",
    "antidisestablishmentarianism",
    "a",
    "running",
    "hyperparameters",
    "Zürich",
    "2022",
    "[MASK]",
    "🙂",  # [UNK] with the MiniLM vocabulary
    "[UNK]",
]


@pytest.fixture(scope="module")
def tables(tokenizer):
    return word_start_table(tokenizer), special_token_table(tokenizer), boundary_token_table(tokenizer)


def batch_of(tokenizer, texts, max_length=64):
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def seeded_masks(
    tokenizer, tables, ids, attention, seed, decoder_ratio=0.5, pool_size=256, token_rules="authors"
):
    """``retromae_masks`` at the encoder ratio 0.3, drawn from a fresh generator seeded with ``seed``."""
    word_starts, special, boundary = tables
    generator = torch.Generator().manual_seed(seed)
    return retromae_masks(
        ids,
        attention,
        word_starts,
        special,
        103,
        len(tokenizer),
        0.3,
        decoder_ratio,
        pool_size,
        generator,
        token_rules=token_rules,
        boundary=boundary,
    )


texts_strategy = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=0, max_size=30).map(" ".join), min_size=1, max_size=6
)


def words_as_python(tokenizer, ids, attention, token_rules="authors"):
    """Word spans, in Python. ``"authors"``: transformers 4.46's ``_whole_word_mask`` (skip the strings
    ``[CLS]``/``[SEP]``; ``##`` continues the last candidate word, if any). ``"skip_special"``: special
    tokens are skipped and ``##`` continues only the word right before it."""
    tokens = tokenizer.convert_ids_to_tokens(ids[: int(attention.sum())])
    spans: list[list[int]] = []
    for i, token in enumerate(tokens):
        if token_rules == "authors":
            if token in ("[CLS]", "[SEP]"):
                continue
            if spans and token.startswith("##"):
                spans[-1].append(i)
            else:
                spans.append([i])
            continue
        if token in tokenizer.all_special_tokens:
            continue
        if spans and token.startswith("##") and spans[-1][-1] == i - 1:
            spans[-1].append(i)
        else:
            spans.append([i])
    return spans


@settings(max_examples=40, deadline=None)
@given(texts=texts_strategy, ratio=st.floats(0.05, 0.95), seed=st.integers(0, 2**31 - 1))
def test_whole_word_mask_properties(tokenizer, tables, texts, ratio, seed):
    """Under ``"skip_special"`` (no special token in a word) the mask is visible as it was chosen."""
    word_starts, special, _ = tables
    ids, attention = batch_of(tokenizer, texts)
    generator = torch.Generator().manual_seed(seed)
    masked = whole_word_mask(
        ids, attention, word_starts, special, ratio, generator, token_rules="skip_special"
    )

    maskable = maskable_tokens(ids, attention, special)
    assert not (masked & ~maskable).any(), "special tokens or padding were masked"
    for row in range(ids.size(0)):
        spans = words_as_python(tokenizer, ids[row], attention[row], "skip_special")
        # Only whole words: every word is either fully masked or fully visible.
        for span in spans:
            assert len({bool(masked[row, i]) for i in span}) == 1
        budget = int(mask_budget(attention[row].sum()[None], ratio))
        count = int(masked[row].sum())
        assert count <= budget
        # Greedy maximality: no unmasked word still fits, so the count is within one word of the target.
        leftover = [len(s) for s in spans if not masked[row, s[0]]]
        assert all(length > budget - count for length in leftover)
        if leftover:
            assert budget - count < max(leftover)


@settings(max_examples=40, deadline=None)
@given(
    texts=texts_strategy,
    ratio=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**31 - 1),
    token_rules=st.sampled_from(TOKEN_RULES),
)
def test_encoder_mask_is_the_python_greedy_on_the_rule_s_words(
    tokenizer, tables, texts, ratio, seed, token_rules
):
    """Exactly the collator's selection, replayed: the words of the rule (``[UNK]`` a word under
    ``"authors"``) visited in the generator's order, each taken when it fits the budget, and then every
    special id unmasked as ``torch_mask_tokens`` does (a chosen ``[UNK]`` used up budget, stays unmasked)."""
    word_starts, special, boundary = tables
    ids, attention = batch_of(tokenizer, texts)
    masked = whole_word_mask(
        ids,
        attention,
        word_starts,
        special,
        ratio,
        torch.Generator().manual_seed(seed),
        token_rules=token_rules,
        boundary=boundary,
    )
    spans_per_row = [
        words_as_python(tokenizer, ids[row], attention[row], token_rules) for row in range(len(ids))
    ]
    width = max(1, max(len(spans) for spans in spans_per_row))
    _, order = visiting_order(len(ids), width, torch.device("cpu"), torch.Generator().manual_seed(seed))
    for row, spans in enumerate(spans_per_row):
        lengths = [len(span) for span in spans] + [0] * (width - len(spans))
        budget = int(mask_budget(attention[row].sum()[None], ratio))
        chosen = python_greedy(lengths, order[row].tolist(), budget)
        expected = torch.zeros(ids.size(1), dtype=torch.bool)
        for word in chosen:
            expected[spans[word]] = True
        expected &= ~special[ids[row]]
        assert torch.equal(masked[row], expected), (row, tokenizer.convert_ids_to_tokens(ids[row]))


@settings(max_examples=25, deadline=None)
@given(texts=texts_strategy, seed=st.integers(0, 2**31 - 1))
def test_masks_are_deterministic_under_a_seed(tokenizer, tables, texts, seed):
    ids, attention = batch_of(tokenizer, texts)

    first, second = (seeded_masks(tokenizer, tables, ids, attention, seed) for _ in range(2))
    for name in ("encoder_input_ids", "encoder_labels", "decoder_labels", "decoder_visible"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


@settings(max_examples=25, deadline=None)
@given(texts=texts_strategy, seed=st.integers(0, 2**31 - 1), token_rules=st.sampled_from(TOKEN_RULES))
def test_retromae_masks_is_the_public_steps_in_order(tokenizer, tables, texts, seed, token_rules):
    """``retromae_masks`` works out the words once for all three masks; it must give exactly what the
    public functions give when called in the same order on the same generator."""
    word_starts, special, boundary = tables
    rules = {"token_rules": token_rules, "boundary": boundary}
    ids, attention = batch_of(tokenizer, texts)
    masks = seeded_masks(tokenizer, tables, ids, attention, seed, pool_size=16, token_rules=token_rules)
    generator = torch.Generator().manual_seed(seed)
    encoder_masked = whole_word_mask(ids, attention, word_starts, special, 0.3, generator, **rules)
    encoder_input_ids, encoder_labels = bert_mask_replacement(
        ids, encoder_masked, 103, len(tokenizer), generator
    )
    visible = decoder_attention_mask(ids, attention, word_starts, special, 0.5, 16, generator, **rules)
    targets = decoder_targets(ids, attention, special, token_rules)
    assert torch.equal(masks.encoder_input_ids, encoder_input_ids)
    assert torch.equal(masks.encoder_labels, encoder_labels)
    assert torch.equal(masks.decoder_labels, ids.masked_fill(~targets, -100))
    assert torch.equal(masks.decoder_visible, visible)


@settings(max_examples=40, deadline=None)
@given(
    texts=texts_strategy,
    ratio=st.floats(0.3, 0.9),
    seed=st.integers(0, 2**31 - 1),
    token_rules=st.sampled_from(TOKEN_RULES),
)
def test_decoder_mask_never_shows_self_always_shows_cls(tokenizer, tables, texts, ratio, seed, token_rules):
    word_starts, special, boundary = tables
    ids, attention = batch_of(tokenizer, texts)
    visible = decoder_attention_mask(
        ids,
        attention,
        word_starts,
        special,
        ratio,
        generator=torch.Generator().manual_seed(seed),
        token_rules=token_rules,
        boundary=boundary,
    )
    never_hidden = special if token_rules == "skip_special" else boundary
    length = ids.size(1)
    real = attention.bool()
    for row in range(ids.size(0)):
        n = int(real[row].sum())
        assert not visible[row].diagonal()[:n].any(), "a position sees itself"
        assert visible[row, 1:n, 0].all(), "a position cannot see [CLS]"
        assert not visible[row, :, n:].any(), "padding is visible"
        assert visible[row].any(dim=1).all(), "an attention row is empty"
        # Tokens outside words are never hidden by the random mask (only from themselves).
        for column in range(n):
            if never_hidden[ids[row, column]]:
                rows = [r for r in range(n) if r != column]
                assert visible[row, rows, column].all()
    assert visible.shape == (ids.size(0), length, length)


def python_greedy(lengths: list[int], order: list[int], budget: int) -> set[int]:
    """HF ``_whole_word_mask``'s loop: visit words in order, take each one that still fits."""
    chosen, count = set(), 0
    for word in order:
        size = lengths[word]
        if size == 0 or count >= budget:
            continue
        if count + size <= budget:
            chosen.add(word)
            count += size
    return chosen


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=70), min_size=1, max_size=5),
    ratio=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**31 - 1),
)
def test_greedy_selection_matches_python_greedy_on_the_same_order(lengths, ratio, seed):
    """Prefix + continuation give exactly the skip-and-continue greedy, row by row, for the visiting
    order the generator draws (replayed with ``visiting_order``)."""
    width = max(len(row) for row in lengths)
    table = torch.tensor([row + [0] * (width - len(row)) for row in lengths])
    budget = torch.tensor([max(1, round(sum(row) * ratio)) for row in lengths])
    chosen = choose_whole_words(table, budget, torch.Generator().manual_seed(seed))
    _, order = visiting_order(len(lengths), width, torch.device("cpu"), torch.Generator().manual_seed(seed))
    for row in range(len(lengths)):
        expected = python_greedy(table[row].tolist(), order[row].tolist(), int(budget[row]))
        assert set(torch.nonzero(chosen[row]).flatten().tolist()) == expected


def test_greedy_continuation_beyond_one_window():
    """A row whose fitting words come long after the first misfit (more than one scan window)."""
    lengths = torch.tensor([[5] * 80 + [1] * 3])
    for seed in range(20):
        chosen = choose_whole_words(lengths, torch.tensor([7]), torch.Generator().manual_seed(seed))
        _, order = visiting_order(1, 83, torch.device("cpu"), torch.Generator().manual_seed(seed))
        assert set(torch.nonzero(chosen[0]).flatten().tolist()) == python_greedy(
            lengths[0].tolist(), order[0].tolist(), 7
        )


def test_visiting_order_is_a_uniform_permutation():
    _, order = visiting_order(60000, 4, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(60000, 4))
    counts = torch.bincount((order * torch.tensor([64, 16, 4, 1])).sum(1), minlength=256)
    permutations = counts[counts > 0]
    assert permutations.numel() == 24
    expected = 60000 / 24
    assert ((permutations - expected).abs() < 5 * expected**0.5).all()
    # Rows of more than 2048 words use int64 keys (enough random bits left beside the index).
    keys, order = visiting_order(20, 3000, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert keys.dtype == torch.int64
    assert torch.equal(order.sort(dim=1).values, torch.arange(3000).expand(20, 3000))
    assert torch.equal(keys.gather(1, order), keys.sort(dim=1).values)


@pytest.mark.parametrize("token_rules", TOKEN_RULES)
def test_word_index_joins_continuation_pieces(tokenizer, tables, token_rules):
    word_starts, special, boundary = tables
    ids, attention = batch_of(tokenizer, ["unbelievable tokenization works"])
    maskable = word_tokens(ids, attention, special, boundary, token_rules)
    words = word_index(ids, maskable, word_starts, token_rules)
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    assert tokens[2:4] == ["token", "##ization"]
    assert words[0].tolist() == [-1, 0, 1, 1, 2, -1]
    assert word_lengths(words)[0, :3].tolist() == [1, 2, 1]


def test_word_index_across_a_skipped_token_follows_each_rule(tables):
    """A continuation piece after an in-text ``[SEP]``: ``_whole_word_mask`` appends it to the last word seen
    (``"authors"``); ``"skip_special"`` starts a new word. ``[UNK]`` is a word only under ``"authors"``."""
    word_starts, special, boundary = tables
    ids = torch.tensor(
        [[101, 7592, 102, 29201, 100, 2088, 102]]
    )  # [CLS] hello [SEP] ##dict [UNK] world [SEP]
    assert not word_starts[29201]
    attention = torch.ones_like(ids)
    authors = word_index(
        ids, word_tokens(ids, attention, special, boundary, "authors"), word_starts, "authors"
    )
    skip = word_index(
        ids, word_tokens(ids, attention, special, boundary, "skip_special"), word_starts, "skip_special"
    )
    assert authors[0].tolist() == [-1, 0, -1, 0, 1, 2, -1]
    assert skip[0].tolist() == [-1, 0, -1, 1, -1, 2, -1]


def test_token_rules_are_checked(tokenizer, tables):
    word_starts, special, boundary = tables
    ids, attention = batch_of(tokenizer, ["a text"])
    with pytest.raises(ValueError, match="token_rules"):
        whole_word_mask(
            ids, attention, word_starts, special, 0.3, token_rules="authors_v2", boundary=boundary
        )
    with pytest.raises(ValueError, match="boundary"):
        whole_word_mask(ids, attention, word_starts, special, 0.3)


def test_bert_replacement_rates():
    ids = torch.full((400, 250), 7)
    masked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    corrupted, labels = bert_mask_replacement(
        ids, masked, mask_token_id=103, vocab_size=30522, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(labels != -100, masked)
    n = masked.sum().item()
    to_mask = (corrupted == 103)[masked].sum().item() / n
    kept = (corrupted == 7)[masked].sum().item() / n
    assert abs(to_mask - 0.8) < 0.01
    assert abs(kept - (0.1 + 0.1 / 30522)) < 0.01
    assert torch.equal(corrupted[~masked], ids[~masked])


def _rates_from_masks(tokenizer, texts, masked_rows):
    """Mask rate per word kind (its length, or ``"[UNK]"``/``"[MASK]"`` for those one-token words), from a
    list of (ids, attention, mask) rows."""
    by_kind: dict[int | str, list[float]] = {}
    for ids, attention, masked in masked_rows:
        for span in words_as_python(tokenizer, ids, attention, "authors"):
            token = tokenizer.convert_ids_to_tokens(int(ids[span[0]]))
            kind = token if token in ("[UNK]", "[MASK]") else len(span)
            by_kind.setdefault(kind, []).append(float(masked[span[0]]))
    return {k: sum(v) / len(v) for k, v in by_kind.items()}, {k: len(v) for k, v in by_kind.items()}


def test_statistically_equivalent_to_authors_collator(tokenizer, tables, sample_texts):
    """Over many draws, per-token and per-word-kind mask rates match the reference collator's, on rows with
    ``[UNK]`` (emoji, one row of nothing else) and an in-text ``[MASK]`` too; decoder labels are identical."""
    word_starts, special, boundary = tables
    texts = sample_texts[:12] + [
        "unbelievable hyperparameters of antidisestablishmentarianism in Zürich",
        "🙂 the cat 🎉 sat on 🙂 the mat",
        "🙂🙂 🎉 🙂",
        "retrieval 🙂 with a [MASK] token 🎉 inside unbelievable",
        "emoji at the end 🎉",
    ]
    ids, attention = batch_of(tokenizer, texts, max_length=48)
    assert (ids == tokenizer.unk_token_id).sum() >= 9
    reference = ReferenceRetroMAECollator(tokenizer, encoder_mlm_probability=0.3, decoder_mlm_probability=0.5)
    unpadded = [row[: int(a.sum())].tolist() for row, a in zip(ids, attention, strict=False)]
    random.seed(0)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    draws = 150
    ours_enc, ref_enc, ours_dec, ref_dec = [], [], [], []
    for _ in range(draws):
        ref = reference(unpadded)
        ours = retromae_masks(
            ids,
            attention,
            word_starts,
            special,
            tokenizer.mask_token_id,
            len(tokenizer),
            0.3,
            0.5,
            generator=generator,
            boundary=boundary,
        )
        for row in range(ids.size(0)):
            ref_enc.append((ids[row], attention[row], ref["encoder_labels"][row] != -100))
            ours_enc.append((ids[row], attention[row], ours.encoder_labels[row] != -100))
            # Decoder: the column pattern seen by query row 1 (hidden = not visible, self excluded).
            ref_hidden = ref["decoder_attention_mask"][row, 1] == 0
            ours_hidden = ~ours.decoder_visible[row, 1]
            ref_hidden[1] = False
            ours_hidden[1] = False
            ref_dec.append((ids[row], attention[row], ref_hidden))
            ours_dec.append((ids[row], attention[row], ours_hidden))

    for ours_rows, ref_rows in ((ours_enc, ref_enc), (ours_dec, ref_dec)):
        ours_rate, counts = _rates_from_masks(tokenizer, texts, ours_rows)
        ref_rate, _ = _rates_from_masks(tokenizer, texts, ref_rows)
        assert {"[UNK]", "[MASK]"} <= set(counts)
        for kind, n in counts.items():
            p = ref_rate[kind]
            tolerance = 4 * max((p * (1 - p) / n) ** 0.5, 1 / n) + 0.005
            assert abs(ours_rate[kind] - p) <= tolerance, (kind, ours_rate[kind], p, n)
        # Per-token rate over all maskable tokens.
        ours_tokens = torch.cat([m[: int(a.sum())].float() for _, a, m in ours_rows]).mean()
        ref_tokens = torch.cat([m[: int(a.sum())].float() for _, a, m in ref_rows]).mean()
        assert abs(ours_tokens - ref_tokens) < 0.01

    # The 80/10/10 corruption agrees too.
    ref = reference(unpadded)
    ours = retromae_masks(
        ids,
        attention,
        word_starts,
        special,
        tokenizer.mask_token_id,
        len(tokenizer),
        0.3,
        0.5,
        boundary=boundary,
    )
    assert torch.equal(ref["decoder_labels"], ours.decoder_labels)
    # [UNK] words use up encoder budget in both: the encoder masks fewer tokens per row than on the old rule.
    budget_rows = [row for row, text in enumerate(texts) if "🙂" in text]
    ours_count = torch.stack([m.sum() for _, _, m in ours_enc]).view(draws, -1)[:, budget_rows].float().mean()
    ref_count = torch.stack([m.sum() for _, _, m in ref_enc]).view(draws, -1)[:, budget_rows].float().mean()
    assert abs(ours_count - ref_count) < 0.15, (ours_count, ref_count)


def unk_rows(repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-made rows, each ``repeats`` times: (A) 10 tokens, 5 one-piece words and 3 ``[UNK]``;
    (B) ``[CLS]`` + 8 ``[UNK]`` + ``[SEP]``; (C) an in-text ``[MASK]`` (id 103), padded."""
    rows = [
        [101, 7592, 100, 2088, 100, 100, 1996, 4937, 2743, 102],
        [101] + [100] * 8 + [102],
        [101, 7592, 103, 2088, 102, 0, 0, 0, 0, 0],
    ]
    ids = torch.tensor(rows).repeat_interleave(repeats, dim=0)
    return ids, (ids != 0).long()


@pytest.mark.parametrize("token_rules", TOKEN_RULES)
def test_hand_made_rows_with_unk_follow_the_rule(tables, token_rules):
    """Encoder budget, decoder visibility and labels on rows with ``[UNK]`` and an in-text ``[MASK]``.

    ``"authors"``: 8 one-token words in row A ([UNK] included) share a budget of round(10 * 0.3) = 3, so each
    word is chosen with probability 3/8 and a chosen [UNK] stays unmasked: 3 * 5/8 masked tokens on average;
    the decoder's pool masks hide 5 of the 8 words, [UNK] as often as any; every position but the first and
    last is a decoder label. ``"skip_special"``: the 5 real words take the whole budget (3 masked, always),
    the decoder hides all 5 and never a [UNK], and neither [UNK] nor [MASK] is a label.
    """
    word_starts, special, boundary = tables
    repeats = 600
    ids, attention = unk_rows(repeats)
    masks = retromae_masks(
        ids,
        attention,
        word_starts,
        special,
        103,
        30522,
        0.3,
        0.5,
        generator=torch.Generator().manual_seed(0),
        token_rules=token_rules,
        boundary=boundary,
    )
    encoder = masks.encoder_labels != -100
    a, b, c = (slice(i * repeats, (i + 1) * repeats) for i in range(3))
    unk = ids == 100
    assert not (encoder & (unk | (ids == 103))).any()  # special ids are never encoder-masked
    words_a = [1, 3, 6, 7, 8]
    counts_a = encoder[a].sum(dim=1).float()
    decoder_labelled = masks.decoder_labels != -100
    hidden = ~masks.decoder_visible & attention.bool()[:, None, :]
    hidden.diagonal(dim1=1, dim2=2).fill_(False)  # a query also hides itself; leave that out
    if token_rules == "authors":
        assert counts_a.max() <= 3 and abs(counts_a.mean() - 3 * 5 / 8) < 0.1
        assert abs(encoder[a][:, words_a].float().mean() - 3 / 8) < 0.04
        assert not encoder[b].any()  # all chosen words are [UNK]: no encoder label at all
        expected_labels = attention.bool().clone()
        expected_labels[:, 0] = False
        expected_labels[torch.arange(len(ids)), attention.sum(dim=1) - 1] = False
        assert torch.equal(decoder_labelled, expected_labels)
        assert decoder_labelled[c][:, 2].all()  # the in-text [MASK] is predicted
        # Query 1 of row A: its pool mask hides 5 of the 8 words (4 when it chose itself).
        assert set(hidden[a][:, 1].sum(dim=1).tolist()) <= {4, 5}
        assert abs(hidden[a][:, 1][:, [2, 4, 5]].float().mean() - 5 / 8) < 0.06
        assert hidden[b][:, 1, 2:9].any(dim=1).all()  # [UNK]-only rows are hidden from the decoder too
    else:
        assert (counts_a == 3).all()
        assert not encoder[b].any()
        assert torch.equal(decoder_labelled, attention.bool() & ~special[ids])
        assert not decoder_labelled[b].any() and not decoder_labelled[c][:, 2].any()
        assert (hidden[a][:, 1].sum(dim=1) == 4).all()  # all 5 words, less the query itself
        assert not hidden[unk[:, None, :].expand_as(hidden)].any()
    # [CLS], [SEP] and padding are never labels, never hidden from the other positions.
    assert not decoder_labelled[:, 0].any() and not decoder_labelled[ids == 102].any()
    assert not decoder_labelled[attention == 0].any()
    assert not hidden[:, :, 0].any() and not hidden[(ids == 102)[:, None, :].expand_as(hidden)].any()


def test_torch_path_equals_numpy_path(tokenizer, tables, sample_texts, monkeypatch):
    """The pure-torch path (used on GPUs) gives exactly the masks of the CPU path through NumPy."""
    import retromae_st.masking as masking

    ids, attention = batch_of(tokenizer, sample_texts[:8] + ["unbelievable hyperparameters"], max_length=48)

    def masks():
        return seeded_masks(tokenizer, tables, ids, attention, seed=3, decoder_ratio=0.6)

    through_numpy = masks()
    monkeypatch.setattr(masking, "_through_numpy", lambda tensor: False)
    plain_torch = masks()
    for name in ("encoder_input_ids", "encoder_labels", "decoder_labels", "decoder_visible"):
        assert torch.equal(getattr(through_numpy, name), getattr(plain_torch, name)), name


def test_decoder_rows_share_the_pool_masks(tokenizer, tables, sample_texts):
    """With a pool of one mask, every query row sees the same columns (apart from itself); with the
    default pool, rows differ."""
    word_starts, special, boundary = tables
    ids, attention = batch_of(tokenizer, sample_texts[:4], max_length=48)
    generator = torch.Generator().manual_seed(0)
    for pool_size, shared in ((1, True), (256, False)):
        visible = decoder_attention_mask(
            ids, attention, word_starts, special, 0.5, pool_size, generator, boundary=boundary
        )
        for row in range(ids.size(0)):
            n = int(attention[row].sum())
            # One shared mask: each column is seen by every other row or by none.
            seen_by = visible[row, :n, :n].sum(dim=0)
            same = bool(((seen_by == 0) | (seen_by == n - 1)).all())
            assert same == shared, (pool_size, row)
