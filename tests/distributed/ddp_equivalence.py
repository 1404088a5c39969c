"""torchrun worker: a loss's DDP step on 2 ranks equals one process on the combined batch.

Usage: torchrun --nproc_per_node 2 -m tests.distributed.ddp_equivalence LOSS MODEL_DIR RESULT_JSON

Every rank builds the same model and loss (same seed), tokenises the same combined batch and draws
the same masks from a fixed generator (the randomness is controlled so the comparison is exact),
then trains on its own half as the sentence-transformers trainer does it: the model wrapped in
``DistributedDataParallel`` and put into the loss, the loss's own parameters (decoder, MLM head)
averaged by :func:`retromae_st.checkpointing.sync_loss_gradients` before the optimizer step. Rank 0 also runs the combined batch in
one process, without DDP, on a copy, and writes the loss and gradient differences to RESULT_JSON,
together with each rank's first draw of its own masking generator (which must differ per rank).
Add a loss by name to ``LOSSES`` (e.g. DupMAELoss) to cover it too.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import fields, replace
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from retromae_st import DupMAELoss, RetroMAELoss, load_cls_model
from retromae_st.checkpointing import sync_loss_gradients

LOSSES = {"retromae": RetroMAELoss, "dupmae": DupMAELoss}
# Equal word counts, so each half holds as many labelled tokens as the other and the mean of the
# two ranks' mean losses is the combined batch's mean loss.
TEXTS = [
    "the cat sat on the mat by the door",
    "a dog ran in the park all day long",
    "we read a good book about the deep sea",
    "she went to the shop to buy some milk",
    "the sun is hot and the sky is blue",
    "they play loud music in the city at night",
    "he likes to walk with his very old friend",
    "our team won the game in the last minute",
]


class TrainStep(nn.Module):
    """The loss's total under fixed masks."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, features, masks):
        return sum(self.loss.compute_loss_terms(features, masks).values())


def rows(value, start: int, stop: int):
    if isinstance(value, torch.Tensor):
        return value[start:stop]
    if not hasattr(value, "__dataclass_fields__"):
        return value  # batch-level metadata such as the modality name
    return replace(value, **{f.name: getattr(value, f.name)[start:stop] for f in fields(value)})


def gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def main() -> None:
    loss_name, model_dir, result_path = sys.argv[1:4]
    dist.init_process_group("gloo", timeout=timedelta(seconds=90))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = load_cls_model(model_dir, max_seq_length=32)
    loss = LOSSES[loss_name](model)
    loss.eval()  # no dropout: its noise would differ between the split and combined batch
    reference = copy.deepcopy(loss)

    features = dict(model.preprocess(TEXTS))
    masks = loss.make_masks(features, torch.Generator().manual_seed(1234))
    per_rank = len(TEXTS) // world
    start, stop = rank * per_rank, (rank + 1) * per_rank
    local = {key: rows(value, start, stop) for key, value in features.items()}
    # As transformers' Trainer wraps a non-PreTrainedModel, and as ST's compute_loss inserts it.
    loss.model = DistributedDataParallel(model, find_unused_parameters=True)
    step = TrainStep(loss)
    local_loss = step(local, rows(masks, start, stop))
    local_loss.backward()
    unsynced = gradients(step)
    sync_loss_gradients(loss)
    mean_loss = local_loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world

    # Each rank's own masking stream (seeded from the same torch seed, as the trainer seeds every rank).
    draw = torch.rand(4, generator=loss.mask_generator(torch.device("cpu")))
    draws = [torch.zeros(4) for _ in range(world)]
    dist.all_gather(draws, draw)

    if rank == 0:
        single = TrainStep(reference)
        single_loss = single(features, masks)
        single_loss.backward()
        got = {k.replace(".module.", "."): v for k, v in gradients(step).items()}
        expected = gradients(single)
        result = {
            "ddp_loss": mean_loss.item(),
            "single_loss": single_loss.item(),
            "max_grad_diff": max((got[k] - expected[k]).abs().max().item() for k in expected),
            "grad_names_equal": sorted(got) == sorted(expected),
            # What the decoder's gradients would be if the loss's own parameters were not averaged.
            "max_unsynced_decoder_grad_diff": max(
                (unsynced[k] - expected[k]).abs().max().item() for k in expected if ".decoder." in k
            ),
            "rank_draws": [d.tolist() for d in draws],
        }
        with open(result_path, "w") as handle:
            json.dump(result, handle)
    # Both ranks leave together: rank 1 would otherwise tear down its end of the gloo group while rank 0
    # is still busy with the single-process reference.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
