"""torchrun worker: ``retromae-st pretrain`` on 2 CPU ranks trains and keeps the ranks' weights equal.

Usage: torchrun --nproc_per_node 2 -m tests.distributed.cli_ranks_agree RESULT_JSON PRETRAIN_ARGUMENTS...

Runs the CLI's ``main`` unchanged; the model and loss it trains are picked up on the way (by wrapping
``retromae_st.pretraining.train_with_checks``) to compare the ranks' parameters after training.
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from retromae_st import pretraining
from retromae_st.cli import main
from tests.distributed.trainer_ranks_agree import max_rank_difference


def run() -> None:
    result_path, argv = sys.argv[1], sys.argv[2:]
    trained = {}
    train_with_checks = pretraining.train_with_checks

    def recording(model, loss, *args, **kwargs):
        trained.update(model=model, loss=loss)
        trainer, checkpoint = train_with_checks(model, loss, *args, **kwargs)
        trained["log_history"] = trainer.state.log_history
        trained["world_size"] = trainer.args.world_size
        return trainer, checkpoint

    pretraining.train_with_checks = recording
    code = main(["pretrain", *argv])
    model, loss = trained["model"], trained["loss"]
    model_ids = {id(p) for p in model.parameters()}
    result = {
        "code": code,
        "world_size": trained["world_size"],
        "losses": [entry["loss"] for entry in trained["log_history"] if "loss" in entry],
        "loss_params": max_rank_difference([p for p in loss.parameters() if id(p) not in model_ids]),
        "model_params": max_rank_difference(list(model.parameters())),
    }
    if dist.get_rank() == 0:
        with open(result_path, "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    run()
