"""Cross-entropy of a linear layer's output without keeping the ``N x V`` logits alive.

The MLM heads' last layer projects every labelled position onto the whole vocabulary. Autograd keeps
the ``N x V`` log-probabilities for the backward pass and then allocates two more ``N x V`` gradient
buffers; at long sequence lengths these dominate a RetroMAE step's memory. Because the loss is a
scalar produced right here, its gradients with respect to the layer's input, weight and bias can be
computed in the forward pass, chunk by chunk (``softmax - one_hot``), and only scaled by the incoming
gradient in the backward pass. The arithmetic is the same as autograd's (one forward and two backward
matrix products per chunk, no recomputation); only ``N x H`` and ``V x H`` results are kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Elements of one chunk of logits (rows x vocabulary); 2**24 float32 values = 64 MiB.
CHUNK_ELEMENTS = 2**24


#: Targets equal to this are left out of the mean (as ``F.cross_entropy``'s default ``ignore_index``).
IGNORE_INDEX = -100


class LinearCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(F.linear(x, weight, bias).float(), targets)`` (mean), computed in row chunks.

    With ``ignore=True``, rows whose target is ``IGNORE_INDEX`` are left out and the mean is over the
    others, counted on the device (no host synchronisation; 0 when every row is ignored).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk_rows: int, ignore: bool = False):  # type: ignore[override]
        needs_grad = any(ctx.needs_input_grad[:3])
        rows = x.size(0)
        if ignore:
            valid = targets != IGNORE_INDEX
            targets = targets.clamp(min=0)
            # per-row weight of the mean: 1 / count for labelled rows, 0 for ignored ones
            row_weight = valid.float() / valid.sum().clamp(min=1).float()
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x, dtype=torch.float32) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_grad and bias is not None else None
        for start in range(0, rows, chunk_rows):
            x_chunk = x[start : start + chunk_rows]
            target_chunk = targets[start : start + chunk_rows]
            logits = F.linear(x_chunk, weight, bias).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            row_loss = log_norm - logits.gather(1, target_chunk[:, None]).squeeze(1)
            if ignore:
                weight_chunk = row_weight[start : start + chunk_rows]
                total += (row_loss * weight_chunk).sum()
            else:
                total += row_loss.sum()
            if not needs_grad:
                continue
            # d(mean CE)/d(logits) = (softmax - one_hot) / rows, in place on the logits buffer.
            probabilities = logits.sub_(log_norm[:, None]).exp_()
            probabilities.scatter_add_(1, target_chunk[:, None], torch.full_like(log_norm[:, None], -1.0))
            if ignore:
                probabilities.mul_(weight_chunk[:, None])
            else:
                probabilities.div_(rows)
            compute = torch.promote_types(x_chunk.dtype, weight.dtype)
            if torch.is_autocast_enabled(x.device.type):
                compute = torch.get_autocast_dtype(x.device.type)
            grad_logits = probabilities.to(compute)
            grad_x[start : start + chunk_rows] = grad_logits @ weight.to(compute)
            grad_weight += (grad_logits.T @ x_chunk.to(compute)).float()
            if grad_bias is not None:
                grad_bias += probabilities.sum(dim=0)
        ctx.save_for_backward(grad_x, grad_weight, grad_bias)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total if ignore else total / rows

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grads = []
        for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes, strict=True):
            grads.append(None if grad is None else (grad * grad_output).to(dtype))
        return *grads, None, None, None


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_rows: int | None = None,
    ignore: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T + bias`` against ``targets``, memory ``O(chunk x V)``.

    Args:
        x: ``(N, H)`` inputs of the output projection, ``N >= 1``.
        weight: ``(V, H)`` projection weight.
        bias: ``(V,)`` bias or ``None``.
        targets: ``(N,)`` class indices.
        chunk_rows: rows per chunk; default keeps a chunk of logits at ``CHUNK_ELEMENTS``.
        ignore: leave rows whose target is ``IGNORE_INDEX`` out of the mean (0 if all are). Without it
            every row counts: select the labelled rows first.
    """
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // weight.size(0))
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(x, weight, bias, targets, chunk_rows, ignore)
    logits = F.linear(x, weight, bias).float()
    if not ignore:
        return F.cross_entropy(logits, targets)
    return ignored_mean_cross_entropy(logits, targets)


def ignored_mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits, targets)`` over the rows not at ``IGNORE_INDEX``, 0 (not NaN) when
    there are none, without a host synchronisation."""
    summed = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return summed / (targets != IGNORE_INDEX).sum().clamp(min=1)
