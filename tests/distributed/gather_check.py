"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU): RetroMAEContrastiveLoss with gather_across_devices.

Each rank takes its slice of a fixed batch, computes the loss with ``gather_across_devices=True`` and
backpropagates; rank 0 saves the loss averaged over ranks and the gradients averaged over ranks (what
DDP would apply) to ``OUTPUT``, for ``tests/test_stage2_distributed.py`` to compare with one process on
the whole batch. Usage: ``gather_check.py MODEL_DIR OUTPUT ROWS_PER_RANK``.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from retromae_st import RetroMAEContrastiveLoss, load_cls_model


def batch_texts(rows: int) -> list[list[str]]:
    """Three columns (anchor, positive, hard negative) of ``rows`` distinct texts: the same in every process."""
    topics = ["rivers", "volcanoes", "jazz", "chess", "bread", "comets", "tides", "bees", "glass", "maps"]
    anchors = [f"what do we know about {topics[i % 10]} number {i}" for i in range(rows)]
    positives = [f"{topics[i % 10]} are described here in passage {i}." for i in range(rows)]
    negatives = [f"an unrelated note {i} on {topics[(i + 3) % 10]}." for i in range(rows)]
    return [anchors, positives, negatives]


def tracked_parameters(model) -> dict[str, torch.nn.Parameter]:
    encoder = model[0].auto_model
    return {
        "last_layer": encoder.encoder.layer[-1].output.dense.weight,
        "first_layer": encoder.encoder.layer[0].attention.self.query.weight,
    }


def contrastive_loss_and_grads(model, columns, gather: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The contrastive term (MAE term computed alongside) and the gradient of the contrastive term alone."""
    with torch.no_grad():
        with_mae = RetroMAEContrastiveLoss(model, gather_across_devices=gather)(
            [model.tokenize(c) for c in columns]
        )
    model.zero_grad()
    loss = RetroMAEContrastiveLoss(model, mae_weight=0.0, gather_across_devices=gather)
    value = loss([model.tokenize(c) for c in columns])["contrastive"]
    value.backward()
    assert torch.allclose(value.detach(), with_mae["contrastive"], atol=1e-6)
    return value.detach(), {name: p.grad.detach().clone() for name, p in tracked_parameters(model).items()}


def main() -> None:
    model_dir, output, rows_per_rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dist.init_process_group("gloo", timeout=timedelta(seconds=90))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = load_cls_model(model_dir, max_seq_length=32)
    model.eval()  # no dropout: every process must embed a text identically
    columns = [
        column[rank * rows_per_rank : (rank + 1) * rows_per_rank]
        for column in batch_texts(rows_per_rank * world)
    ]
    loss, grads = contrastive_loss_and_grads(model, columns, gather=True)
    dist.all_reduce(loss)
    for grad in grads.values():
        dist.all_reduce(grad)
    if rank == 0:
        torch.save({"loss": loss / world, "grads": {name: g / world for name, g in grads.items()}}, output)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
