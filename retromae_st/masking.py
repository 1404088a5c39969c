"""Vectorised whole-word masking for RetroMAE-style pre-training.

Everything here is a pure function on tensors: it runs on whatever device the batch is on, has no
per-example Python loop. On CPU, the three whole-array integer passes torch is slow at there (sort,
int64 conversion, cumulative sum) go through NumPy on the same memory. The algorithm is the one of the authors'
``RetroMAECollator`` (GitHub staoxiao/RetroMAE, ``src/pretrain/data.py``), which builds on
``transformers.DataCollatorForWholeWordMask._whole_word_mask``:

1. Words are runs of tokens in which every piece after the first is a continuation piece
   (``##x`` for WordPiece, a piece without ``Ġ``/``▁`` for byte-level BPE and SentencePiece; CJK
   characters are words of their own, see :func:`word_start_table`). Which tokens can be part of a word
   is set by the *token rules* (:data:`TOKEN_RULES`): ``"authors"`` (default), as ``_whole_word_mask``,
   which skips only the tokens ``[CLS]`` and ``[SEP]`` (by their string), so ``[UNK]`` and any other
   special id inside the text is a word; ``"skip_special"``: no special token is a word. Padding never
   belongs to a word.
2. A row of ``n`` tokens (special tokens included, padding excluded) gets a budget of
   ``k = min(max_predictions, max(1, round(n * ratio)))`` tokens.
3. Words are visited in a uniformly random order; a word is taken when it still fits in the budget
   and skipped otherwise (a later, shorter word may still fit).
4. The encoder input is corrupted 80/10/10 at the chosen tokens except special ids: as the collator's
   ``torch_mask_tokens``, a chosen ``[UNK]`` has used up budget but stays as it is and carries no label.

Step 3 is reproduced exactly, without sorting scores per row: every word gets a random integer key
whose low bits are its own index, so one sort of the keys' *values* gives the visiting order
(:func:`visiting_order`); a cumulative sum of word lengths in that order finds the first word that
does not fit, every word with a smaller key is taken, and a short scan (only over the rows whose
prefix stopped at a word longer than the remaining budget) continues past that word. Tests check the
result against the authors' greedy loop on the same visiting order, property by property, and in
distribution against the authors' collator.

The decoder's attention mask follows the authors' collator too: per example, a pool of
``min(n, pool_size)`` whole-word masks at the decoder ratio is drawn, every query position picks one
of them uniformly at random, and additionally hides itself (under the authors' rules a ``[UNK]`` word
is hidden like any other). The decoder predicts every position but the first and the last of a row
(``"authors"``; ``[UNK]`` included) or every non-special token (``"skip_special"``); never padding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

#: Markers that begin a new word in byte-level BPE (RoBERTa, GPT-2) and SentencePiece vocabularies.
WORD_START_MARKERS = ("Ġ", "▁")
#: Marker of a continuation piece in WordPiece vocabularies (BERT).
CONTINUATION_MARKER = "##"
#: ``"authors"``: every token but ``[CLS]``/``[SEP]`` is a word and the decoder predicts every position but
#: the first and last, as in the authors' collator; ``"skip_special"``: special tokens (``[UNK]`` included)
#: are never masked, hidden or predicted.
TOKEN_RULES = ("authors", "skip_special")


def word_start_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Returns a bool tensor over the vocabulary: ``True`` where a token id starts a new word.

    - WordPiece vocabularies (BERT) mark continuation pieces (``##x``); every other piece starts a word.
    - Byte-level BPE (RoBERTa, ModernBERT: ``Ġ``) and SentencePiece / Metaspace (XLM-R: ``▁``)
      vocabularies mark word *starts*; every other piece continues the word before it. A text's first
      piece often has no marker (no prefix space); it still starts a word, because the token before it
      is a special one (:func:`word_index`).
    - CJK characters (as BERT's tokenizer defines them) are words of their own: in a start-marker
      vocabulary a piece that begins with one starts a word without a marker (a piece of several CJK
      characters is one word). WordPiece tokenizers split CJK characters into pieces without ``##``
      already, so their rule is left as it is (the authors' collator: ``not token.startswith("##")``).
    - Byte pieces (byte-level BPE pieces that hold part of a character, SentencePiece byte-fallback
      pieces ``<0xNN>``): a piece that begins inside a character never starts a word; one that begins
      with the first byte of a CJK character does.

    The scheme is read from the tokenizer's backend (a WordPiece model, or a ``continuing_subword_prefix``)
    and otherwise from the vocabulary (the more common of ``##`` continuations and ``Ġ``/``▁`` starts).
    """
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    tokens = [""] * size
    for token, index in vocab.items():
        tokens[index] = token
    continuation = _continuation_prefix(tokenizer, tokens)
    byte_level = continuation is None and _uses_byte_level(tokens)
    return torch.tensor([_starts_word(token, continuation, byte_level) for token in tokens], dtype=torch.bool)


def _continuation_prefix(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> str | None:
    """The prefix of continuation pieces (``##``), or ``None`` for a vocabulary that marks word starts."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    prefix = getattr(model, "continuing_subword_prefix", None)
    if prefix:
        return prefix
    if model is not None and type(model).__name__ in ("BPE", "Unigram"):
        return None
    continuations = sum(token.startswith(CONTINUATION_MARKER) for token in tokens)
    starts = sum(token.startswith(WORD_START_MARKERS) for token in tokens)
    return None if starts > continuations else CONTINUATION_MARKER


def _uses_byte_level(tokens: list[str]) -> bool:
    return sum(token.startswith("Ġ") for token in tokens) > sum(token.startswith("▁") for token in tokens)


def _starts_word(token: str, continuation: str | None, byte_level: bool) -> bool:
    if continuation is not None:
        return not token.startswith(continuation)  # WordPiece tokenizers split CJK characters already
    if token.startswith(WORD_START_MARKERS):
        return True
    fallback = _BYTE_FALLBACK.fullmatch(token)
    if fallback is not None:
        return _bytes_begin_cjk(bytes([int(fallback.group(1), 16)]))
    if byte_level and all(char in _BYTE_OF_CHAR for char in token):
        return _bytes_begin_cjk(bytes(_BYTE_OF_CHAR[char] for char in token))
    return _begins_with_cjk(token)


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 byte values (character -> byte), as byte-level BPE uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_OF_CHAR = _byte_level_alphabet()

#: BERT's CJK code point ranges (``BasicTokenizer._is_chinese_char``): the characters it splits one by one.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def is_cjk(code_point: int) -> bool:
    return any(low <= code_point <= high for low, high in _CJK_RANGES)


def _begins_with_cjk(text: str) -> bool:
    return bool(text) and is_cjk(ord(text[0]))


def _bytes_begin_cjk(data: bytes) -> bool:
    """Whether ``data`` begins with the first byte(s) of a CJK character (the rest may be in later pieces)."""
    if not data:
        return False
    lead = data[0]
    length = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 0
    if length == 0:  # ASCII, or a continuation byte: not the start of a multi-byte character
        return False
    # The smallest code point with the bytes at hand as its prefix (CJK blocks start on 64-aligned points).
    code_point = lead & (0x7F >> length)
    for index in range(1, length):
        following = data[index] if index < len(data) and data[index] >> 6 == 0b10 else 0x80
        code_point = (code_point << 6) | (following & 0x3F)
    return is_cjk(code_point)


def special_token_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Returns a bool tensor over the vocabulary: ``True`` for the tokenizer's special token ids."""
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    table = torch.zeros(size, dtype=torch.bool)
    table[list(tokenizer.all_special_ids)] = True
    return table


def boundary_token_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Returns a bool tensor over the vocabulary: ``True`` for the ids that are never words under the authors'
    token rules: ``[CLS]`` and ``[SEP]`` (``_whole_word_mask`` skips these two token strings), or the
    tokenizer's bos/eos ids for families that name them so (``<s>``, ``</s>``)."""
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    table = torch.zeros(size, dtype=torch.bool)
    names = ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id")
    table[[index for index in (getattr(tokenizer, name, None) for name in names) if index is not None]] = True
    return table


def check_token_rules(token_rules: str) -> str:
    if token_rules not in TOKEN_RULES:
        raise ValueError(f"token_rules must be one of {TOKEN_RULES}, got {token_rules!r}")
    return token_rules


def maskable_tokens(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor
) -> torch.Tensor:
    """Tokens that are neither padding nor one of the ids marked in ``special``. Shape ``(B, L)``, bool."""
    return attention_mask.bool() & ~special.to(input_ids.device)[input_ids]


def word_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special: torch.Tensor,
    boundary: torch.Tensor | None,
    token_rules: str = "authors",
) -> torch.Tensor:
    """Tokens that belong to words (a whole-word mask can choose them), ``(B, L)`` bool: under ``"authors"``
    every real token whose id is not in ``boundary`` (:func:`boundary_token_table`), under ``"skip_special"``
    every real token that is not special."""
    if check_token_rules(token_rules) == "skip_special":
        return maskable_tokens(input_ids, attention_mask, special)
    if boundary is None:
        raise ValueError(
            "token_rules='authors' needs the boundary table (masking.boundary_token_table(tokenizer))"
        )
    return maskable_tokens(input_ids, attention_mask, boundary)


def word_index(
    input_ids: torch.Tensor, maskable: torch.Tensor, word_starts: torch.Tensor, token_rules: str = "authors"
) -> torch.Tensor:
    """Index of the word each token belongs to within its row, ``-1`` for tokens outside words.

    A word token starts a new word when its id is a word start, or (``"authors"``) when no word token comes
    before it in the row: ``_whole_word_mask`` appends a continuation piece to the last word seen, even across
    a skipped ``[SEP]``; or (``"skip_special"``) when the token before it is not a word token. Either way a
    continuation piece right after ``[CLS]`` starts a word.
    """
    if check_token_rules(token_rules) == "authors":
        opens_word = maskable.cumsum(dim=1, dtype=torch.int32) == 1
    else:
        opens_word = ~torch.nn.functional.pad(maskable[:, :-1], (1, 0), value=False)
    starts = maskable & (word_starts.to(input_ids.device)[input_ids] | opens_word)
    index = starts.long().cumsum(dim=1) - 1
    return torch.where(maskable, index, torch.full_like(index, -1))


def decoder_targets(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor, token_rules: str = "authors"
) -> torch.Tensor:
    """Positions the decoder predicts, ``(B, L)`` bool. ``"authors"``: every real position but the first and
    the last of its row (the collator sets the labels of ``[CLS]`` and ``[SEP]`` to -100 and keeps the rest,
    ``[UNK]`` and in-text special ids included); ``"skip_special"``: every real token that is not special.
    Never padding."""
    if check_token_rules(token_rules) == "skip_special":
        return maskable_tokens(input_ids, attention_mask, special)
    real = attention_mask.bool()
    last = real & ~torch.nn.functional.pad(real[:, 1:], (0, 1), value=False)
    targets = real & ~last
    targets[:, 0] = False
    return targets


def unmask_special(masked: torch.Tensor, input_ids: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """``masked`` without the special ids, as transformers' ``torch_mask_tokens`` drops them after the
    whole-word selection (a chosen ``[UNK]`` used up budget but is neither corrupted nor labelled)."""
    return masked & ~special.to(input_ids.device)[input_ids]


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


def word_capacity(words: torch.Tensor) -> int:
    """Number of word slots per row: the batch's largest word count on CPU (where reading it is free and
    saves work), the sequence length elsewhere (an upper bound that needs no device-to-host sync)."""
    if words.device.type == "cpu":
        return int(words.max()) + 1
    return words.size(1)


def mask_budget(num_tokens: torch.Tensor, ratio: float, max_predictions: int = 512) -> torch.Tensor:
    """``min(max_predictions, max(1, round(num_tokens * ratio)))`` per row, as HF's whole-word collator.

    ``torch.round`` rounds half to even, like Python's ``round`` in the reference implementation.
    """
    budget = torch.round(num_tokens.double() * ratio).long()
    return budget.clamp(min=1, max=max_predictions)


def _through_numpy(tensor: torch.Tensor) -> bool:
    """Whether a whole-array integer pass on ``tensor`` goes through NumPy (CPU tensors)."""
    return tensor.device.type == "cpu"


def visiting_order(
    n_rows: int, n_words: int, device: torch.device, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly random visiting order of ``n_words`` words in each of ``n_rows`` rows.

    Every word gets a random integer key whose low bits are the word's own index, so keys are distinct
    within a row and sorting the keys' *values* gives the order (``order = sorted & index_mask``): no
    argsort. Returns ``(keys, order)``: ``keys`` ``(n_rows, n_words)`` (word ``a`` is visited before
    ``b`` iff ``keys[a] < keys[b]``) and ``order`` ``(n_rows, n_words)`` long, the word indices in
    visiting order.

    The random part has ``31 - index_bits`` bits (int32 keys: 22 bits for up to 512 words) or
    ``62 - index_bits`` (int64 keys, used when fewer than 20 bits would be left). Two words whose random
    parts are equal are visited in index order; for a given pair that has probability
    ``2**-random_bits`` (2.4e-7 for 512 words), the order of the ties among float32 scores in
    ``torch.rand(...).argsort()``.

    On CPU the keys are built and sorted through NumPy (zero-copy views of the same memory): its sort
    uses the processor's SIMD sorting networks (x86-simd-sort) and is an order of magnitude faster
    than ``torch.sort`` there, as are its integer conversions. Elsewhere (CUDA) it is plain torch.
    """
    index_bits = max(1, (n_words - 1).bit_length())
    wide = 31 - index_bits < 20
    random_bits = (62 if wide else 31) - index_bits
    random_mask, index_mask = (1 << random_bits) - 1, (1 << index_bits) - 1
    # int64 draws are uniform on [0, 2**63): viewed as two int32 lanes, both lanes' low 31 bits are uniform.
    draws = torch.empty(n_rows, n_words if wide else (n_words + 1) // 2, dtype=torch.int64, device=device)
    draws.random_(generator=generator)
    if _through_numpy(draws):
        random_part = draws.numpy() if wide else draws.numpy().view(np.int32)[:, :n_words]
        keys = ((random_part & random_mask) << index_bits) | np.arange(n_words, dtype=random_part.dtype)
        order = (np.sort(keys, axis=1) & index_mask).astype(np.int64)
        return torch.from_numpy(keys), torch.from_numpy(order)
    random_part = draws if wide else draws.view(torch.int32)[:, :n_words]
    index = torch.arange(n_words, dtype=random_part.dtype, device=device)
    keys = ((random_part & random_mask) << index_bits) | index
    order = (keys.sort(dim=1).values & index_mask).long()
    return keys, order


def _cumulative_sum(values: torch.Tensor) -> torch.Tensor:
    """int32 cumulative sum along the last dimension (through NumPy on CPU, where it is several times
    faster than ``torch.cumsum`` for integers)."""
    if _through_numpy(values):
        return torch.from_numpy(np.cumsum(values.numpy(), axis=-1, dtype=np.int32))
    return values.cumsum(dim=-1, dtype=torch.int32)


def choose_whole_words(
    lengths: torch.Tensor, budget: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Greedy whole-word selection in a uniformly random visiting order, vectorised over rows.

    Args:
        lengths: ``(..., W)`` token count of every word, 0 where a row has no such word. May be an
            expanded view (rows of one example sharing their word lengths); it is never copied.
        budget: ``(...)`` maximum number of tokens to select per row.
        generator: optional random generator (on the same device as ``lengths``).

    Returns:
        ``(..., W)`` bool: the chosen words.
    """
    n_words = lengths.size(-1)
    keys, order = visiting_order(lengths.numel() // max(n_words, 1), n_words, lengths.device, generator)
    keys, order = keys.view(lengths.shape), order.view(lengths.shape)
    # int32 is enough for token counts and markedly faster than int64 for these passes on CPU.
    ordered = lengths.to(torch.int32).gather(-1, order)
    cumulative = _cumulative_sum(ordered)
    # The prefix that fits ends right before the first visited word that does not fit.
    budget = budget.to(torch.int32)[..., None].contiguous()
    first_misfit = torch.searchsorted(cumulative, budget, right=True)
    used = cumulative.gather(-1, (first_misfit - 1).clamp(min=0)).masked_fill(first_misfit == 0, 0)
    remaining = (budget - used).squeeze(-1)
    all_fit = first_misfit == n_words
    misfit_word = order.gather(-1, first_misfit.clamp(max=n_words - 1))
    threshold = keys.gather(-1, misfit_word)
    chosen = ((keys < threshold) | all_fit) & (lengths > 0)
    remaining = remaining.masked_fill(all_fit.squeeze(-1), 0)
    _continue_past_first_misfit(ordered, order, first_misfit.squeeze(-1), remaining, chosen)
    return chosen


def _continue_past_first_misfit(
    ordered: torch.Tensor,
    order: torch.Tensor,
    first_misfit: torch.Tensor,
    remaining: torch.Tensor,
    chosen: torch.Tensor,
    window: int = 32,
) -> None:
    """After the prefix, keep visiting words and take each one that still fits (in place on ``chosen``).

    Only rows whose prefix stopped at a word longer than the remaining budget need this (about one
    row in ten). Their remaining budget is smaller than that word, and most words are one token, so
    the scan almost always ends within a few words: it runs over ``window`` words at a time, on the
    rows that still have budget left, until none has.
    """
    n_words = ordered.size(-1)
    flat_ordered, flat_order = ordered.reshape(-1, n_words), order.reshape(-1, n_words)
    flat_chosen = chosen.view(-1, n_words)
    rows = torch.nonzero(remaining.reshape(-1) > 0).flatten()
    start = first_misfit.reshape(-1)[rows] + 1
    left = remaining.reshape(-1)[rows]
    offsets = torch.arange(window, device=ordered.device)
    while rows.numel() > 0:
        ranks = start[:, None] + offsets
        in_row = ranks < n_words
        ranks = ranks.clamp(max=n_words - 1)
        sizes = flat_ordered[rows].gather(1, ranks)
        sizes = sizes.masked_fill(~in_row | (sizes == 0), torch.iinfo(sizes.dtype).max)  # never fit
        taken = torch.zeros_like(in_row)
        for k in range(window):
            fits = sizes[:, k] <= left
            taken[:, k] = fits
            left = left - torch.where(fits, sizes[:, k], 0)
        words = flat_order[rows].gather(1, ranks)
        flat_chosen[rows[:, None].expand_as(words)[taken], words[taken]] = True
        unfinished = (left > 0) & (start + window < n_words)
        rows, start, left = rows[unfinished], start[unfinished] + window, left[unfinished]


def tokens_of_words(chosen: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Expands a per-word choice to a per-token mask through the token-to-word index ``words``.

    ``chosen`` is ``(B, W)`` with ``words`` ``(B, L)``, or ``(B, P, W)`` (``P`` choices per example,
    sharing that example's ``words``) giving ``(B, P, L)``. Non-word tokens (index -1) are never chosen.
    """
    index = words.clamp(min=0)
    is_word = words >= 0
    if chosen.dim() == words.dim() + 1:
        index = index[:, None, :].expand(*chosen.shape[:-1], words.size(-1))
        is_word = is_word[:, None, :]
    return chosen.gather(-1, index) & is_word


def whole_word_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    word_starts: torch.Tensor,
    special: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
    *,
    token_rules: str = "authors",
    boundary: torch.Tensor | None = None,
) -> torch.Tensor:
    """The encoder's whole-word mask per row at ``ratio``, special ids left unmasked (:func:`unmask_special`).
    Returns ``(B, L)`` bool (``True`` = masked). ``boundary`` (:func:`boundary_token_table`) is needed for
    ``token_rules="authors"``."""
    words = word_index(
        input_ids,
        word_tokens(input_ids, attention_mask, special, boundary, token_rules),
        word_starts,
        token_rules,
    )
    chosen = _whole_word_mask_of_words(words, attention_mask.sum(dim=1), ratio, generator)
    return unmask_special(chosen, input_ids, special)


def _whole_word_mask_of_words(
    words: torch.Tensor, lengths: torch.Tensor, ratio: float, generator: torch.Generator | None
) -> torch.Tensor:
    budget = mask_budget(lengths, ratio)
    chosen = choose_whole_words(word_lengths(words, word_capacity(words)), budget, generator)
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
    *,
    token_rules: str = "authors",
    boundary: torch.Tensor | None = None,
) -> torch.Tensor:
    """The enhanced decoder's per-row random attention mask. Returns ``(B, L, L)`` bool, ``True`` = visible.

    Per example, ``min(n, pool_size)`` whole-word masks are drawn at ``ratio`` (``n`` = the example's
    length); query position ``i`` takes one of them uniformly at random and also hides itself. Tokens
    outside words (``[CLS]``, ``[SEP]``; under ``"skip_special"`` every special token) are never masked, so
    ``[CLS]`` (which carries the sentence embedding) is visible to every position but its own; under
    ``"authors"`` a ``[UNK]`` is hidden like any word. Padding is never visible. Padding *rows* carry no label;
    they are shown ``[CLS]`` only so that no attention row is empty (an empty row would give NaN in SDPA).

    All examples' pools are drawn at once as one ``(B, P, W)`` batch of whole-word masks (``P = min(L,
    pool_size)``; an example uses the first ``min(n, pool_size)`` of its ``P``), so every mask of the
    authors' pool is drawn and nothing depends on which ones the positions pick.
    """
    words = word_index(
        input_ids,
        word_tokens(input_ids, attention_mask, special, boundary, token_rules),
        word_starts,
        token_rules,
    )
    return _decoder_visible_of_words(words, attention_mask, ratio, pool_size, generator)


def _decoder_visible_of_words(
    words: torch.Tensor,
    attention_mask: torch.Tensor,
    ratio: float,
    pool_size: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    batch, length = words.shape
    device = words.device
    lengths = attention_mask.sum(dim=1)
    real = attention_mask.bool()
    pool = min(length, pool_size)

    # int32 before expanding: the (B, P, W) view is then used as it is, never copied.
    lengths_of_words = word_lengths(words, word_capacity(words)).to(torch.int32)
    budget = mask_budget(lengths, ratio)
    chosen = choose_whole_words(
        lengths_of_words[:, None, :].expand(batch, pool, lengths_of_words.size(1)),
        budget[:, None].expand(batch, pool),
        generator,
    )
    pool_visible = ~tokens_of_words(chosen, words) & real[:, None, :]  # (B, P, L)

    pool_per_example = lengths.clamp(min=1, max=pool)
    draw = torch.rand(batch, length, device=device, generator=generator)
    pick = (draw * pool_per_example[:, None]).long().clamp(max=pool - 1)  # uniform in [0, pool_b)
    rows = (torch.arange(batch, device=device)[:, None] * pool + pick).view(-1)
    visible = pool_visible.view(batch * pool, length).index_select(0, rows).view(batch, length, length)
    visible.diagonal(dim1=1, dim2=2).fill_(False)
    visible[:, :, 0] |= ~real
    return visible


@dataclass
class RetroMAEMasks:
    """Everything one RetroMAE step needs, derived from a tokenised batch."""

    encoder_input_ids: torch.Tensor  #: (B, L) ids after whole-word masking + 80/10/10
    encoder_labels: torch.Tensor  #: (B, L) original id at encoder-masked tokens, -100 elsewhere
    decoder_labels: torch.Tensor  #: (B, L) original id at every decoder target, -100 elsewhere
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
    *,
    token_rules: str = "authors",
    boundary: torch.Tensor | None = None,
) -> RetroMAEMasks:
    """Encoder and decoder masks of one batch, as the authors' ``RetroMAECollator`` makes them
    (``token_rules="authors"``, which needs ``boundary``, :func:`boundary_token_table`), or with special
    tokens kept out of masking and prediction (``"skip_special"``)."""
    maskable = word_tokens(input_ids, attention_mask, special, boundary, token_rules)
    words = word_index(input_ids, maskable, word_starts, token_rules)
    encoder_masked = unmask_special(
        _whole_word_mask_of_words(words, attention_mask.sum(dim=1), encoder_mask_ratio, generator),
        input_ids,
        special,
    )
    encoder_input_ids, encoder_labels = bert_mask_replacement(
        input_ids, encoder_masked, mask_token_id, vocab_size, generator
    )
    targets = decoder_targets(input_ids, attention_mask, special, token_rules)
    decoder_labels = input_ids.masked_fill(~targets, -100)
    visible = _decoder_visible_of_words(
        words, attention_mask, decoder_mask_ratio, decoder_pool_size, generator
    )
    return RetroMAEMasks(encoder_input_ids, encoder_labels, decoder_labels, visible)
