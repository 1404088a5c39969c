"""DupMAE's OT vector and encoder MLM term from one chunked vocabulary projection, without ``N x V`` logits.

DupMAE max-pools the MLM logits of the pooled positions of each row into a vocabulary-sized "OT" vector
``ot[b, v] = max_n (W x_n + c)_v`` and trains the encoder MLM on the same logits at the labelled positions.
Kept for autograd, those logits are ``N x V`` float32 values (``N`` pooled positions of the batch) plus
their gradient buffers. Neither term needs them after its forward pass:

- a max-pool's gradient reaches only the position(s) holding each row's maximum: the backward needs the
  ``B x V`` arg-max positions, a sparse ``N x V`` logits gradient with ``B x V`` non-zeros, and two
  sparse-dense products (``O(B V H)``, not ``O(N V H)``);
- the cross-entropy's gradients are computed chunk by chunk in the forward pass (``softmax - one_hot``),
  as :mod:`retromae_st.fused_cross_entropy` does, and only scaled by the incoming gradient afterwards.

Ties get what ``scatter_reduce(reduce="amax")`` gives them in autograd: the gradient of an entry is split
evenly between all the positions that hold its maximum. The forward keeps a count of holders per entry
and, only for entries held more than once, the list of their positions (see :func:`_merge_segment`).
Exact float32 ties are rare (identical hidden states or a degenerate head); under bfloat16 autocast,
whose logits have 8 significant bits, they are common, and that list stays a small fraction of ``B x V``.

Peak extra memory: one chunk of logits (``chunk_size x V``) plus ``O(B x V)`` bookkeeping, ``O(N x H)`` and
``O(V x H)`` gradient buffers, and the tied positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retromae_st.fused_cross_entropy import CHUNK_ELEMENTS, IGNORE_INDEX


class _PoolState:
    """Running max-pool of a batch: per (row, vocabulary entry) the max, its first position and how many
    positions hold it; plus the positions of entries held more than once (candidates, filtered at the end)."""

    def __init__(self, batch_size: int, vocab_size: int, device: torch.device, track_positions: bool) -> None:
        self.values = torch.full((batch_size, vocab_size), float("-inf"), device=device)
        self.track_positions = track_positions
        if track_positions:
            self.first = torch.zeros((batch_size, vocab_size), dtype=torch.long, device=device)
            self.count = torch.zeros((batch_size, vocab_size), dtype=torch.int32, device=device)
            self.tied_entries: list[torch.Tensor] = []  # flat row * V + column
            self.tied_positions: list[torch.Tensor] = []
            self.tied_values: list[torch.Tensor] = []
        self.touched = torch.zeros(batch_size, dtype=torch.bool, device=device)

    def record_ties(
        self, row: int, columns: torch.Tensor, positions: torch.Tensor, values: torch.Tensor
    ) -> None:
        self.tied_entries.append(row * self.values.size(1) + columns)
        self.tied_positions.append(positions)
        self.tied_values.append(values)

    def final_ties(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(flat entries, positions)`` of every holder of an entry held more than once."""
        device = self.values.device
        if not self.tied_entries:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty
        entries, positions = torch.cat(self.tied_entries), torch.cat(self.tied_positions)
        still_max = torch.cat(self.tied_values) == self.values.view(-1)[entries]
        return entries[still_max], positions[still_max]


def _merge_segment(state: _PoolState, row: int, segment: torch.Tensor, offset: int) -> None:
    """Folds ``segment`` ``(n, V)``, the logits of positions ``offset .. offset + n - 1`` of ``row``, into the state.

    Entries held more than once are recorded as they arise: all holders in this segment of an entry whose
    (new or equal) max is held at least twice, and the previous sole holder of an entry this segment ties.
    Recorded holders later overtaken by a larger value are dropped by :meth:`_PoolState.final_ties`.
    """
    maximum = segment.amax(dim=0)
    previous = state.values[row]
    if not state.track_positions:
        state.values[row] = torch.maximum(previous, maximum)
        state.touched[row] = True
        return
    hits = (segment == maximum).nonzero()  # rows sorted, so the first hit of a column is its first holder
    positions, columns = hits[:, 0] + offset, hits[:, 1]
    vocab_size = segment.size(1)
    if hits.size(0) == vocab_size:  # every column held once in this segment
        first = positions.new_empty(vocab_size).index_copy_(0, columns, positions)
        count = torch.ones(vocab_size, dtype=torch.int32, device=segment.device)
    else:
        first = positions.new_full((vocab_size,), torch.iinfo(torch.long).max)
        first = first.scatter_reduce(0, columns, positions, reduce="amin")
        count = torch.bincount(columns, minlength=vocab_size).to(torch.int32)
    if not bool(state.touched[row]):
        greater = torch.ones(vocab_size, dtype=torch.bool, device=segment.device)
        equal = torch.zeros_like(greater)
    else:
        greater, equal = maximum > previous, maximum == previous
    old_count, old_first = state.count[row].clone(), state.first[row].clone()
    new_count = torch.where(greater, count, torch.where(equal, old_count + count, old_count))
    recorded = (greater | equal) & (new_count >= 2)
    if bool(recorded.any()):
        keep = recorded[columns]
        state.record_ties(row, columns[keep], positions[keep], maximum[columns[keep]])
        newly_tied = (equal & (old_count == 1)).nonzero().squeeze(1)
        if newly_tied.numel():
            state.record_ties(row, newly_tied, old_first[newly_tied], previous[newly_tied])
    state.values[row] = torch.maximum(previous, maximum)
    state.first[row] = torch.where(greater, first, old_first)
    state.count[row] = new_count
    state.touched[row] = True


def _row_spans(row_counts: list[int]) -> list[tuple[int, int, int]]:
    """``(row, first position, end)`` of every row with at least one pooled position."""
    spans, start = [], 0
    for row, count in enumerate(row_counts):
        if count:
            spans.append((row, start, start + count))
        start += count
    return spans


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.promote_types(x.dtype, weight.dtype)


class BowMaxPool(torch.autograd.Function):
    """``(ot_vector, encoder_mlm)`` from ``logits = F.linear(x, weight, bias).float()`` computed in chunks.

    ``ot_vector[b] = max`` of the logits of row ``b``'s positions (zeros for a row without any);
    ``encoder_mlm`` = mean cross-entropy of the logits at the positions whose label is not ``IGNORE_INDEX``
    (0 when none is). See the module docstring for the backward.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, row_counts, labels, batch_size, chunk_size):  # type: ignore[override]
        needs_grad = any(ctx.needs_input_grad[:3])
        vocab_size, positions = weight.size(0), x.size(0)
        compute = _compute_dtype(x, weight)
        state = _PoolState(batch_size, vocab_size, x.device, track_positions=needs_grad)
        labelled = labels != IGNORE_INDEX
        label_weight = 1.0 / labelled.sum().clamp(min=1).float()
        mlm_loss = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.zeros_like(x, dtype=torch.float32) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_grad and bias is not None else None
        row_spans = _row_spans(row_counts)
        for start in range(0, positions, chunk_size):
            stop = min(start + chunk_size, positions)
            logits = F.linear(x[start:stop], weight, bias).float()
            for row, row_start, row_stop in row_spans:
                if row_start < stop and row_stop > start:
                    segment_start, segment_stop = max(row_start, start), min(row_stop, stop)
                    segment = logits[segment_start - start : segment_stop - start]
                    _merge_segment(state, row, segment, segment_start)
            local = labelled[start:stop].nonzero().squeeze(1)
            if local.numel() == 0:
                continue
            chunk_logits = logits.index_select(0, local)
            del logits  # only the labelled rows are needed from here on
            targets = labels[start:stop].index_select(0, local)
            log_norm = torch.logsumexp(chunk_logits, dim=-1)
            mlm_loss += (log_norm - chunk_logits.gather(1, targets[:, None]).squeeze(1)).sum() * label_weight
            if not needs_grad:
                continue
            # d(mean CE)/d(logits) = (softmax - one_hot) / #labelled, in place on the copied logits.
            probabilities = chunk_logits.sub_(log_norm[:, None]).exp_()
            probabilities.scatter_add_(1, targets[:, None], torch.full_like(log_norm[:, None], -1.0))
            grad_logits = probabilities.mul_(label_weight).to(compute)
            x_chunk = x[start:stop].index_select(0, local).to(compute)
            grad_x.index_add_(0, local + start, (grad_logits @ weight.to(compute)).float())
            grad_weight += (grad_logits.T @ x_chunk).float()
            if grad_bias is not None:
                grad_bias += grad_logits.float().sum(dim=0)
        ot_vector = torch.where(state.touched[:, None], state.values, torch.zeros_like(state.values))
        if needs_grad:
            tied_entries, tied_positions = state.final_ties()
            ctx.save_for_backward(
                x,
                weight,
                state.first,
                state.count,
                tied_entries,
                tied_positions,
                grad_x,
                grad_weight,
                grad_bias,
            )
            ctx.compute = compute
            ctx.has_bias = bias is not None
            ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return ot_vector, mlm_loss

    @staticmethod
    def backward(ctx, grad_ot, grad_mlm):  # type: ignore[override]
        x, weight, first, count, tied_entries, tied_positions, grad_x, grad_weight, grad_bias = (
            ctx.saved_tensors
        )
        scale = grad_mlm if grad_mlm is not None else torch.zeros((), device=x.device)
        grad_x, grad_weight = grad_x * scale, grad_weight * scale
        grad_bias = grad_bias * scale if grad_bias is not None else None
        if grad_ot is not None:
            pool_x, pool_weight, pool_bias = _max_pool_gradients(
                grad_ot, x, weight, first, count, tied_entries, tied_positions, ctx.compute
            )
            grad_x += pool_x
            grad_weight += pool_weight
            if grad_bias is not None:
                grad_bias += pool_bias
        grads = [grad_x, grad_weight, grad_bias]
        # Under autocast the unfused path's gradients pass through the casts to the compute dtype: same rounding.
        grads = [
            None if grad is None else grad.to(ctx.compute).to(dtype)
            for grad, dtype in zip(grads, ctx.dtypes, strict=True)
        ]
        return *grads, None, None, None, None


def _max_pool_gradients(grad_ot, x, weight, first, count, tied_entries, tied_positions, compute):
    """Gradients of ``sum(grad_ot * ot_vector)`` for ``x``, ``weight`` and the bias: ``grad_ot[b, v] / count``
    at each holder of entry ``(b, v)``, applied through a sparse ``N x V`` logits gradient."""
    batch_size, vocab_size = count.shape
    share = grad_ot.float() / count.clamp(min=1)  # rows without positions have count 0 and get nothing
    single = (count == 1).view(-1).nonzero().squeeze(1)
    entries = torch.cat([single, tied_entries])
    positions = torch.cat([first.view(-1)[single], tied_positions])
    values = share.view(-1)[entries].to(compute).float()  # the logits gradient, rounded as autocast does
    logits_grad = torch.sparse_coo_tensor(
        torch.stack([positions, entries % vocab_size]),
        values,
        (x.size(0), vocab_size),
        is_coalesced=False,
        check_invariants=False,
    )
    pool_x = torch.sparse.mm(logits_grad, weight.to(compute).float())
    pool_weight = torch.sparse.mm(logits_grad.t(), x.to(compute).float())
    pool_bias = torch.zeros(vocab_size, device=x.device).index_add_(0, entries % vocab_size, values)
    return pool_x, pool_weight, pool_bias


def bow_max_pool(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pooled: torch.Tensor,
    labels: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DupMAE's OT vector ``(B, V)`` and encoder MLM loss from one chunked projection of the pooled positions.

    Equal (loss and gradients) to ``logits = F.linear(x, weight, bias).float()`` followed by a row-wise
    ``scatter_reduce(amax)`` (zeros for rows without positions) and ``F.cross_entropy`` at the labelled
    positions, without keeping the ``N x V`` logits.

    Args:
        x: ``(N, H)`` inputs of the vocabulary projection (the MLM head's transform output) at the pooled
            positions, in the row-major order of ``pooled.nonzero()``.
        weight: ``(V, H)`` projection weight.
        bias: ``(V,)`` bias or ``None``.
        pooled: ``(B, L)`` boolean mask of the pooled positions (``N`` of them).
        labels: ``(N,)`` encoder MLM targets at the pooled positions, ``-100`` where there is none;
            ``None``: no MLM term (returned as 0).
        chunk_size: positions projected at once; default keeps a chunk of logits at ``CHUNK_ELEMENTS``.
    """
    positions = x.size(0)
    if pooled.dim() != 2:
        raise ValueError(f"pooled must be a (B, L) boolean mask, got shape {tuple(pooled.shape)}")
    row_counts = pooled.sum(dim=1).tolist()  # one host synchronisation: the rows' spans decide the loop
    if sum(row_counts) != positions:
        raise ValueError(f"pooled sets {sum(row_counts)} positions but x has {positions} rows")
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // weight.size(0))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if labels is None:
        labels = torch.full((positions,), IGNORE_INDEX, dtype=torch.long, device=x.device)
    return BowMaxPool.apply(x, weight, bias, row_counts, labels, pooled.size(0), chunk_size)
