"""Exact top-k of DupMAE's max-pooled MLM logits with a bfloat16 screening pass.

The OT vector of a text is ``p_v = max_t (w_v . h_t + b_v)`` over its ordinary tokens ``t``, and only its
``top_k`` largest entries are kept. Computing every ``w_v . h_t`` in float32 costs ``hidden x V`` MACs per
token, more than a whole MiniLM encoder. :func:`screened_top_k` gets the same result faster:

1. **Screen**: one bfloat16 GEMM (``h`` and ``W`` rounded to bfloat16, float32 accumulation, bfloat16
   output; about 3x the float32 throughput on CPUs with AVX512-BF16/AMX) gives approximate logits ``s``,
   max-pooled per text into ``p~``.
2. **Bound**: a rigorous bound ``E_bv`` on ``|p_bv - (p~_bv + b_v)|`` (below) gives for every entry an
   interval ``[L, U]`` that contains the float32 value. The k-th largest lower bound ``tau_b`` is a lower
   bound of the true k-th largest value, so an entry with ``U < tau_b`` is strictly below the true top-k
   and cannot be in it.
3. **Recompute**: the remaining candidates (typically ``1.1-1.3 x top_k`` of the 30,522 entries) are
   recomputed exactly with the float32 head, and their top-k is the answer.

The bound, for one token ``h`` (float32, after the head's transform) and one row ``w`` of the decoder,
with ``~`` = rounded to bfloat16, ``d = w - w~``, ``e = h - h~``, ``u = 2^-8`` (bfloat16 unit roundoff)
and ``g_n = n 2^-24 / (1 - n 2^-24)``:

- the float32 logit ``x`` is within ``g_(H+2) (|b| + |h| |w|)`` of the real ``h . w + b``
  (any summation order, FMA or not);
- the real ``h . w`` is within ``|h| |d| + |e| |w~|`` of ``h~ . w~`` (Cauchy-Schwarz);
- the float32 accumulation of ``h~ . w~`` is within ``g_(2H) |h~| |w~|`` of it, and the bfloat16 output
  ``s`` within ``u / (1 - u) |s|`` of the accumulation.

Summing, ``|x - (s + b)| <= c |s| + e_tv`` with ``c = u / (1 - u)``. Since ``s -> s + c|s|`` is
increasing, the max over the tokens of a text satisfies
``|p - (p~ + b)| <= c |p~| + max_t e_tv``, and ``max_t e_tv`` is bounded by per-text maxima of token
norms times per-entry norms of ``W`` (rank-one products: cheap). Bounds are evaluated in float64 with a
relative slack for that arithmetic, plus a tiny absolute slack for flushed subnormals.

The recomputation reproduces the float32 path's values bit for bit because a float32 GEMM computes each
output element the same way whatever the numbers of rows and columns, once there are at least
:data:`MIN_GEMM_ROWS` rows and :data:`MIN_GEMM_COLS` columns (smaller products take other kernels, whose
last bit can differ); both paths pad to those sizes. That holds for a single BLAS thread: with several,
MKL partitions a GEMM by its shape, so the float32 path itself (e.g. chunked vs unchunked) and this one
can differ in a logit's last bit, and an entry tied to that precision with the k-th value can swap. Both paths select with :func:`ordered_top_k` (equal
values by ascending index), so ties pick the same entries too. ``tests/test_dupmae_pooling.py`` checks
identity of indices and values against the float32 path on random and real inputs (one BLAS thread).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_GEMM_ROWS = 4
MIN_GEMM_COLS = 16
BF16_UNIT_ROUNDOFF = 2.0**-8
FP32_UNIT_ROUNDOFF = 2.0**-24
FLOAT64_SLACK = 2.0**-40  # relative, covers the float64 arithmetic of the bounds and norms
ABSOLUTE_SLACK = 2.0**-100  # subnormal inputs/products flushed to zero by the bfloat16 kernel


def gamma(n: int) -> float:
    """Higham's ``gamma_n`` for float32: the relative error bound of an ``n``-term dot product."""
    return n * FP32_UNIT_ROUNDOFF / (1 - n * FP32_UNIT_ROUNDOFF)


def padded_rows(function, rows: torch.Tensor) -> torch.Tensor:
    """``function(rows)``, computed on at least :data:`MIN_GEMM_ROWS` rows (repeating the last one).

    A float32 GEMM with fewer rows takes a different kernel whose results can differ in the last bit.
    """
    count = rows.size(0)
    if 0 < count < MIN_GEMM_ROWS:
        index = torch.arange(MIN_GEMM_ROWS, device=rows.device).clamp(max=count - 1)
        return function(rows[index])[:count]
    return function(rows)


def ordered_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the ``k`` largest entries of each row of ``scores`` ``(B, N)``, largest first,
    equal values by ascending index: unlike ``torch.topk``, which tied entries are kept and their order do
    not depend on the rest of the row, so a sub-vector holding every entry ``>=`` the k-th value gives the
    same result as the whole row."""
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    values = scores.new_empty((scores.size(0), k))
    indices = torch.empty((scores.size(0), k), dtype=torch.long, device=scores.device)
    for row, keep in enumerate(scores >= kth):
        kept = keep.nonzero(as_tuple=True)[0]  # ascending
        order = torch.sort(scores[row, kept], descending=True, stable=True).indices[:k]
        values[row], indices[row] = scores[row, kept[order]], kept[order]
    return values, indices


def bf16_screening_supported(device: torch.device) -> bool:
    """Whether a bfloat16 GEMM is fast here: a CPU with native bfloat16 support in oneDNN."""
    if device.type != "cpu":
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


class _WeightSummary:
    """The decoder weight in bfloat16 and the per-entry norms the bound needs, cached per weight version."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.key = _weight_key(weight, bias)
        self.bf16 = weight.detach().to(torch.bfloat16)
        weight64 = weight.detach().double()
        rounded64 = self.bf16.double()
        inflate = 1 + FLOAT64_SLACK
        self.norm = weight64.norm(dim=1) * inflate
        self.rounded_norm = rounded64.norm(dim=1) * inflate
        self.rounding_norm = (weight64 - rounded64).norm(dim=1) * inflate
        self.bias = bias.detach().double()


def _weight_key(weight: torch.Tensor, bias: torch.Tensor) -> tuple:
    return (weight.data_ptr(), weight._version, tuple(weight.shape), bias.data_ptr(), bias._version)


def _summary(head: nn.Module) -> _WeightSummary:
    predictions = head.predictions
    weight, bias = predictions.decoder.weight, predictions.decoder.bias
    cached = getattr(head, "_bf16_screening_summary", None)
    if cached is None or cached.key != _weight_key(weight, bias):
        cached = _WeightSummary(weight, bias)
        head._bf16_screening_summary = cached  # a plain attribute: not a parameter, buffer or state entry
    return cached


def _row_max(values: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = values.new_zeros(batch_size)
    return out.scatter_reduce(0, rows, values, reduce="amax", include_self=True)


@torch.no_grad()
def screening_bounds(
    head: nn.Module, hidden: torch.Tensor, ordinary: torch.Tensor, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The screening pass: float64 ``(lower, upper)`` bounds ``(B, V)`` on the float32 max-pooled logits
    ``max_pool_vocab(head, hidden, ordinary, chunk_size)`` (meaningless for rows without an ordinary
    token), plus the ordinary tokens after the head's transform ``(n, H)`` and their rows ``(n,)``."""
    predictions = head.predictions
    batch_size, vocab_size = hidden.size(0), predictions.decoder.weight.size(0)
    summary = _summary(head)
    rows = ordinary.nonzero(as_tuple=True)[0]
    tokens = hidden[ordinary]
    step = max(tokens.size(0) if chunk_size is None else chunk_size, 1)
    transformed = []
    screened = hidden.new_full((batch_size, vocab_size), float("-inf"), dtype=torch.bfloat16)
    for start in range(0, tokens.size(0), step):
        # The transform is computed in the same chunks as the float32 path, so its outputs are identical.
        chunk = padded_rows(predictions.transform, tokens[start : start + step])
        transformed.append(chunk)
        approx = chunk.to(torch.bfloat16) @ summary.bf16.T
        index = rows[start : start + step, None].expand(-1, vocab_size)
        screened = screened.scatter_reduce(0, index, approx, reduce="amax", include_self=True)
        del approx, index
    transformed = torch.cat(transformed) if transformed else tokens
    lower, upper = _bounds(screened, transformed, rows, batch_size, summary)
    return lower, upper, transformed, rows


@torch.no_grad()
def screened_top_k(
    head: nn.Module, hidden: torch.Tensor, ordinary: torch.Tensor, top_k: int, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ordered_top_k(max_pool_vocab(head, hidden, ordinary, chunk_size), top_k)`` as ``(indices, values)``,
    with the same indices and values, through a bfloat16 screening pass (see the module docstring).

    ``head`` is a ``BertOnlyMLMHead`` in float32. Rows without an ordinary token get the top-k of an
    all-zero vector, as the float32 path does. At most ``chunk_size`` tokens are projected at once.
    """
    predictions = head.predictions
    weight, bias = predictions.decoder.weight, predictions.decoder.bias
    batch_size, vocab_size = hidden.size(0), weight.size(0)
    lower, upper, transformed, rows = screening_bounds(head, hidden, ordinary, chunk_size)
    # tau_b, the k-th largest lower bound, is <= the true k-th largest value: entries with upper < tau_b
    # are strictly below the top-k.
    candidates = upper >= torch.topk(lower, top_k, dim=1).values[:, -1:]
    del lower
    counts = torch.bincount(rows, minlength=batch_size).tolist()
    starts = [sum(counts[:row]) for row in range(batch_size)]

    indices = hidden.new_zeros((batch_size, top_k), dtype=torch.long)
    values = hidden.new_zeros((batch_size, top_k))
    for row in range(batch_size):
        if counts[row] == 0:
            row_values, row_indices = ordered_top_k(hidden.new_zeros((1, vocab_size)), top_k)
            values[row], indices[row] = row_values[0], row_indices[0]
            continue
        columns = candidates[row].nonzero(as_tuple=True)[0]
        if columns.numel() < MIN_GEMM_COLS:  # the MIN_GEMM_COLS highest upper bounds hold every candidate
            columns = torch.topk(upper[row], min(MIN_GEMM_COLS, vocab_size)).indices.sort().values
        row_tokens = transformed[starts[row] : starts[row] + counts[row]]
        exact = padded_rows(lambda x, c=columns: F.linear(x, weight[c], bias[c]), row_tokens).amax(dim=0)
        row_values, best = ordered_top_k(exact[None], top_k)
        values[row], indices[row] = row_values[0], columns[best[0]]
    return indices, values


def _bounds(
    screened: torch.Tensor,
    transformed: torch.Tensor,
    rows: torch.Tensor,
    batch_size: int,
    summary: _WeightSummary,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 ``(lower, upper)`` bounds ``(B, V)`` on the float32 max-pooled logits."""
    hidden_size = transformed.size(1)
    token64 = transformed.double()
    rounded64 = transformed.to(torch.bfloat16).double()
    inflate = 1 + FLOAT64_SLACK
    token_norm = token64.norm(dim=1) * inflate
    rounding_norm = (token64 - rounded64).norm(dim=1) * inflate
    rounded_norm = rounded64.norm(dim=1) * inflate
    # Per text, the max over its tokens of each coefficient of the rank-one terms.
    a_token = _row_max(token_norm, rows, batch_size)[:, None]
    a_rounded = _row_max(rounding_norm + gamma(2 * hidden_size) * rounded_norm, rows, batch_size)[:, None]
    fp32_error = gamma(hidden_size + 2)

    pooled = screened.double().nan_to_num(neginf=0.0)  # rows without ordinary tokens are not used
    c = BF16_UNIT_ROUNDOFF / (1 - BF16_UNIT_ROUNDOFF)
    error = (
        c * pooled.abs()
        + a_token * summary.rounding_norm[None]
        + a_rounded * summary.rounded_norm[None]
        + fp32_error * (a_token * summary.norm[None] + summary.bias.abs()[None])
        + ABSOLUTE_SLACK
    )
    centre = pooled + summary.bias[None]
    slack = FLOAT64_SLACK * (centre.abs() + error)
    lower = centre - error - slack
    upper = centre + error + slack
    return lower, upper
