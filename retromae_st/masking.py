"""Vectorised whole-word masking for RetroMAE-style pre-training.

Everything here is a pure function on tensors: it runs on whatever device the batch is on, has no
per-example Python loop and copies nothing on the host. The algorithm is the one of the authors'
``RetroMAECollator`` (GitHub staoxiao/RetroMAE, ``src/pretrain/data.py``), which builds on
``transformers.DataCollatorForWholeWordMask._whole_word_mask``:

1. Words are runs of tokens in which every piece after the first is a continuation piece
   (``##x`` for WordPiece). Special tokens and padding never belong to a word.
2. A row of ``n`` tokens (special tokens included, padding excluded) gets a budget of
   ``k = min(max_predictions, max(1, round(n * ratio)))`` tokens.
3. Words are visited in a uniformly random order; a word is taken when it still fits in the budget
   and skipped otherwise (a later, shorter word may still fit).

Step 3 is reproduced exactly: a random score per word gives the visiting order, a cumulative sum of
word lengths in that order takes the prefix that fits, and a short loop (over only the rows whose
prefix stopped at a word longer than the remaining budget, at most "longest word - 1" iterations)
continues past the first word that did not fit. Tests check the result against the authors'
algorithm property by property and in distribution.

The decoder's attention mask follows the authors' collator too: per example, a pool of
``min(n, pool_size)`` whole-word masks at the decoder ratio is drawn, every query position picks one
of them uniformly at random, and additionally hides itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

#: Markers that begin a new word in byte-level BPE (RoBERTa, GPT-2) and SentencePiece vocabularies.
WORD_START_MARKERS = ("Ġ", "▁")
#: Marker of a continuation piece in WordPiece vocabularies (BERT).
CONTINUATION_MARKER = "##"


def word_start_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Returns a bool tensor over the vocabulary: ``True`` where a token id starts a new word.

    WordPiece vocabularies mark continuation pieces with ``##``; byte-level BPE and SentencePiece
    vocabularies mark word *starts* with ``Ġ`` / ``▁``. The kind is detected from the vocabulary.
    """
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    tokens = [""] * size
    for token, index in vocab.items():
        tokens[index] = token
    uses_start_markers = not any(t.startswith(CONTINUATION_MARKER) for t in tokens) and any(
        t.startswith(WORD_START_MARKERS) for t in tokens
    )
    if uses_start_markers:
        starts = [t.startswith(WORD_START_MARKERS) for t in tokens]
    else:
        starts = [not t.startswith(CONTINUATION_MARKER) for t in tokens]
    return torch.tensor(starts, dtype=torch.bool)


def special_token_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Returns a bool tensor over the vocabulary: ``True`` for the tokenizer's special token ids."""
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    table = torch.zeros(size, dtype=torch.bool)
    table[list(tokenizer.all_special_ids)] = True
    return table


def maskable_tokens(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor
) -> torch.Tensor:
    """Tokens that may be masked and predicted: not special, not padding. Shape ``(B, L)``, bool."""
    return attention_mask.bool() & ~special.to(input_ids.device)[input_ids]


def word_index(input_ids: torch.Tensor, maskable: torch.Tensor, word_starts: torch.Tensor) -> torch.Tensor:
    """Index of the word each token belongs to within its row, ``-1`` for non-maskable tokens.

    A maskable token starts a new word when its id is a word start or the token before it is not
    maskable (a continuation piece right after ``[CLS]`` starts a word, as in the authors' collator).
    """
    previous_maskable = torch.nn.functional.pad(maskable[:, :-1], (1, 0), value=False)
    starts = maskable & (word_starts.to(input_ids.device)[input_ids] | ~previous_maskable)
    index = starts.long().cumsum(dim=1) - 1
    return torch.where(maskable, index, torch.full_like(index, -1))


def word_lengths(words: torch.Tensor, max_words: int | None = None) -> torch.Tensor:
    """Number of tokens of every word: ``(B, W)`` long, zero for words a row does not have.

    ``W`` is ``max_words`` when given, else the sequence length (an upper bound that needs no sync).
    """
    width = words.size(1) if max_words is None else max(max_words, 1)
    lengths = torch.zeros(words.size(0), width + 1, dtype=torch.long, device=words.device)
    # Non-maskable tokens (index -1) go to the last, discarded bucket.
    bucket = torch.where(words >= 0, words, torch.full_like(words, lengths.size(1) - 1))
    lengths.scatter_add_(1, bucket, torch.ones_like(bucket))
    return lengths[:, :-1]


def mask_budget(num_tokens: torch.Tensor, ratio: float, max_predictions: int = 512) -> torch.Tensor:
    """``min(max_predictions, max(1, round(num_tokens * ratio)))`` per row, as HF's whole-word collator.

    ``torch.round`` rounds half to even, like Python's ``round`` in the reference implementation.
    """
    budget = torch.round(num_tokens.double() * ratio).long()
    return budget.clamp(min=1, max=max_predictions)


def choose_whole_words(
    lengths: torch.Tensor, budget: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Greedy whole-word selection in a random visiting order, vectorised over rows.

    Args:
        lengths: ``(N, W)`` token count of every word, 0 where a row has no such word.
        budget: ``(N,)`` maximum number of tokens to select per row.
        generator: optional random generator (on the same device as ``lengths``).

    Returns:
        ``(N, W)`` bool: the chosen words.
    """
    n_rows, n_words = lengths.shape
    scores = torch.rand(n_rows, n_words, device=lengths.device, generator=generator)
    scores.masked_fill_(lengths == 0, 2.0)  # absent words are visited last and never chosen
    order = scores.argsort(dim=1)
    ordered = lengths.gather(1, order)

    cumulative = ordered.cumsum(dim=1)
    taken = (cumulative <= budget[:, None]) & (ordered > 0)  # the prefix that fits
    # Absent words (length 0) come last, so the prefix's token count is the cumulative sum at its end.
    prefix_words = taken.sum(dim=1)
    used = cumulative.gather(1, (prefix_words - 1).clamp(min=0)[:, None]).squeeze(1)
    remaining = budget - torch.where(prefix_words > 0, used, 0)
    _continue_past_first_misfit(ordered, taken, remaining)

    chosen = torch.zeros_like(taken)
    chosen.scatter_(1, order, taken)
    return chosen


def _continue_past_first_misfit(ordered: torch.Tensor, taken: torch.Tensor, remaining: torch.Tensor) -> None:
    """After the prefix, keep visiting words and take each one that still fits (in place on ``taken``).

    Only rows whose prefix stopped at a word longer than the remaining budget need this; each
    iteration takes at most one more word per row and the remaining budget is smaller than that
    longest word, so the loop is short.
    """
    rows = torch.nonzero(remaining > 0).flatten()
    if rows.numel() == 0:
        return
    row_ordered = ordered[rows]
    row_remaining = remaining[rows]
    last_visited = taken[rows].sum(dim=1) - 1  # the next word is the first one that did not fit
    ranks = torch.arange(ordered.size(1), device=ordered.device)
    candidates = (ranks > last_visited[:, None]) & (row_ordered > 0)
    while True:
        fits = candidates & (row_ordered <= row_remaining[:, None])
        found = fits.any(dim=1)
        if not bool(found.any()):
            return
        first = fits.long().argmax(dim=1)
        found_rows = torch.nonzero(found).flatten()
        taken[rows[found_rows], first[found_rows]] = True
        row_remaining = row_remaining - torch.where(
            found, row_ordered.gather(1, first[:, None]).squeeze(1), 0
        )
        candidates &= ranks > torch.where(found, first, last_visited)[:, None]
        last_visited = torch.where(found, first, last_visited)


def tokens_of_words(chosen: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Expands a per-word choice ``(N, W)`` to a per-token mask ``(N, L)`` through ``words`` ``(N, L)``."""
    picked = chosen.gather(1, words.clamp(min=0))
    return picked & (words >= 0)


def whole_word_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    word_starts: torch.Tensor,
    special: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One whole-word mask per row at ``ratio``. Returns ``(B, L)`` bool (``True`` = masked)."""
    maskable = maskable_tokens(input_ids, attention_mask, special)
    words = word_index(input_ids, maskable, word_starts)
    budget = mask_budget(attention_mask.sum(dim=1), ratio)
    chosen = choose_whole_words(word_lengths(words, int(words.max().item()) + 1), budget, generator)
    return tokens_of_words(chosen, words)


def bert_mask_replacement(
    input_ids: torch.Tensor,
    masked: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption of the masked tokens, per token (as ``torch_mask_tokens``).

    Returns the corrupted ids and the labels (original id where masked, ``-100`` elsewhere).
    """
    labels = input_ids.masked_fill(~masked, -100)
    draw = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
    to_mask_token = masked & (draw < 0.8)
    to_random = masked & (draw >= 0.8) & (draw < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, device=input_ids.device, generator=generator)
    corrupted = input_ids.masked_fill(to_mask_token, mask_token_id)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


def decoder_attention_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    word_starts: torch.Tensor,
    special: torch.Tensor,
    ratio: float,
    pool_size: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The enhanced decoder's per-row random attention mask. Returns ``(B, L, L)`` bool, ``True`` = visible.

    Per example, ``min(n, pool_size)`` whole-word masks are drawn at ``ratio`` (``n`` = the example's
    length); query position ``i`` takes one of them uniformly at random and also hides itself. Special
    tokens are never masked, so ``[CLS]`` (which carries the sentence embedding) is visible to every
    position but its own. Padding is never visible. Padding *rows* carry no label; they are shown
    ``[CLS]`` only so that no attention row is empty (an empty row would give NaN in SDPA).

    Only the pool masks that some position picks are drawn: the others would influence nothing, so
    the result has exactly the distribution of drawing the whole pool.
    """
    batch, length = input_ids.shape
    device = input_ids.device
    lengths = attention_mask.sum(dim=1)

    pool_per_example = lengths.clamp(min=1, max=pool_size)
    draw = torch.rand(batch, length, device=device, generator=generator)
    pick = (draw * pool_per_example[:, None]).long().clamp(max=pool_size - 1)  # uniform in [0, pool_b)
    slot = torch.arange(batch, device=device)[:, None] * pool_size + pick
    drawn_slots, row_to_drawn = torch.unique(slot, return_inverse=True)
    drawn_example = torch.div(drawn_slots, pool_size, rounding_mode="floor")

    maskable = maskable_tokens(input_ids, attention_mask, special)
    words = word_index(input_ids, maskable, word_starts)
    max_words = int(words.max().item()) + 1
    drawn_words = words[drawn_example]
    budget = mask_budget(lengths, ratio)[drawn_example]
    chosen = choose_whole_words(word_lengths(drawn_words, max_words), budget, generator)
    hidden = tokens_of_words(chosen, drawn_words)[row_to_drawn]  # (B, L, L)

    eye = torch.eye(length, dtype=torch.bool, device=device)
    visible = ~hidden & ~eye & attention_mask.bool()[:, None, :]
    visible[:, :, 0] |= ~attention_mask.bool()
    return visible


@dataclass
class RetroMAEMasks:
    """Everything one RetroMAE step needs, derived from a tokenised batch."""

    encoder_input_ids: torch.Tensor  #: (B, L) ids after whole-word masking + 80/10/10
    encoder_labels: torch.Tensor  #: (B, L) original id at encoder-masked tokens, -100 elsewhere
    decoder_labels: torch.Tensor  #: (B, L) original id at every maskable token, -100 elsewhere
    decoder_visible: torch.Tensor  #: (B, L, L) bool, True where query row may attend to key column


def retromae_masks(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    word_starts: torch.Tensor,
    special: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    encoder_mask_ratio: float,
    decoder_mask_ratio: float,
    decoder_pool_size: int = 256,
    generator: torch.Generator | None = None,
) -> RetroMAEMasks:
    """Encoder and decoder masks of one batch, as the authors' ``RetroMAECollator`` makes them."""
    encoder_masked = whole_word_mask(
        input_ids, attention_mask, word_starts, special, encoder_mask_ratio, generator
    )
    encoder_input_ids, encoder_labels = bert_mask_replacement(
        input_ids, encoder_masked, mask_token_id, vocab_size, generator
    )
    maskable = maskable_tokens(input_ids, attention_mask, special)
    decoder_labels = input_ids.masked_fill(~maskable, -100)
    visible = decoder_attention_mask(
        input_ids, attention_mask, word_starts, special, decoder_mask_ratio, decoder_pool_size, generator
    )
    return RetroMAEMasks(encoder_input_ids, encoder_labels, decoder_labels, visible)
