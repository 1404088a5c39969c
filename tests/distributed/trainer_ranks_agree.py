"""torchrun worker: a short SentenceTransformerTrainer run on 2 CPU ranks keeps the ranks' weights equal.

Usage: torchrun --nproc_per_node 2 -m tests.distributed.trainer_ranks_agree MODEL_DIR OUTPUT_DIR RESULT_JSON

The trainer wraps only the model in DDP; the loss's decoder and MLM head stay equal across ranks only
because :class:`retromae_st.LossStateCallback` averages their gradients. Rank 0 writes the largest
difference between the ranks' loss-owned and model parameters after training, and what the loss saw.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from retromae_st import RetroMAELoss, load_cls_model
from tests.conftest import SAMPLE_CORPUS


def max_rank_difference(tensors: list[torch.Tensor]) -> float:
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max((g - gathered[0]).abs().max().item() for g in gathered)


def main() -> None:
    model_dir, output_dir, result_path = sys.argv[1:4]
    texts = [line.strip() for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    torch.manual_seed(0)
    model = load_cls_model(model_dir, max_seq_length=32)
    loss = RetroMAELoss(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=5e-4,
        save_strategy="no",
        report_to="none",
        seed=7,
        use_cpu=True,  # on CPU, transformers sets up torch.distributed (gloo) only with use_cpu=True
        ddp_backend="gloo",
        disable_tqdm=True,
    )
    dataset = Dataset.from_dict({"text": texts[:64]})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    wrappers = []
    compute_loss_terms = loss.compute_loss_terms

    def record_wrapper(features, masks):
        wrappers.append(type(loss.model).__name__)
        return compute_loss_terms(features, masks)

    loss.compute_loss_terms = record_wrapper
    trainer.train()
    model_ids = {id(p) for p in model.parameters()}
    result = {
        "world_size": args.world_size,
        "model_wrappers": sorted(set(wrappers)),
        "loss_params": max_rank_difference([p for p in loss.parameters() if id(p) not in model_ids]),
        "model_params": max_rank_difference(list(model.parameters())),
    }
    if dist.get_rank() == 0:
        with open(result_path, "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()
