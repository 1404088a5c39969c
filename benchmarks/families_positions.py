"""Decoder position signal for encoders without a position table (issue #17): a tiny ModernBERT run.

ModernBERT encodes positions with rotary embeddings inside its attention and has no absolute position
table, so RetroMAE's enhanced decoder, whose query stream is "[CLS] + position embeddings", needs a
position signal of its own. retromae-st gives the decoder a learned table (our extension of the paper),
added to the query stream and to the key/value token embeddings as BERT's table is. This script trains a
tiny random ModernBERT (tokenizer trained on the sample corpus, tests/families_helpers.py) with:

- ``learned``: retromae-st's decoder (learned table in both streams);
- ``query_only``: the learned table in the query stream only (keys carry no position);
- ``none``: no position signal at all (query = [CLS] alone, keys = token embeddings).

It prints every term before and after training on held-out texts under fixed masks, and the CPU time.

Usage: OMP_NUM_THREADS=1 python benchmarks/families_positions.py [--steps 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retromae_st import RetroMAELoss, load_cls_model  # noqa: E402
from tests.conftest import average_loss_terms  # noqa: E402
from tests.families_helpers import build_family_checkpoint, corpus_lines  # noqa: E402


class QueryOnlyPositions(RetroMAELoss):
    """The decoder's learned positions in the query stream only."""

    def decoder_token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.transformer.auto_model.embeddings(input_ids=input_ids)


class NoPositions(QueryOnlyPositions):
    """No position signal: every query row is the [CLS] embedding."""

    def decoder_positions(self, length: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(length, self.decoder.config["hidden_size"], device=device)


VARIANTS = {"learned": RetroMAELoss, "query_only": QueryOnlyPositions, "none": NoPositions}


def run(variant: str, path: Path, train: list[str], held_out: list[str], steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = load_cls_model(str(path), max_seq_length=64)
    loss = VARIANTS[variant](model, decoder_pool_size=32)
    evaluation = [dict(model.tokenize(held_out[i : i + 16])) for i in range(0, len(held_out), 16)]
    before = average_loss_terms(loss, evaluation)
    optimizer = torch.optim.AdamW(loss.parameters(), lr=1e-3)
    started = time.process_time()
    for step in range(steps):
        texts = [train[(step * 16 + i) % len(train)] for i in range(16)]
        terms = loss([dict(model.tokenize(texts))])
        optimizer.zero_grad()
        sum(terms.values()).backward()
        optimizer.step()
    cpu = time.process_time() - started
    return {"before": before, "after": average_loss_terms(loss, evaluation), "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lines = corpus_lines(3000)[:3000]
    train, held_out = lines[:2800], lines[2800:2960]
    with tempfile.TemporaryDirectory() as directory:
        path = build_family_checkpoint("modernbert", Path(directory) / "modernbert", seed=args.seed)
        print(
            f"tiny ModernBERT (2 layers, 64 wide), {args.steps} steps x 16 texts, lr 1e-3, seed {args.seed}"
        )
        print("| decoder positions | encoder_mlm before -> after | decoder_mlm before -> after | CPU s |")
        print("|---|---:|---:|---:|")
        for variant in VARIANTS:
            result = run(variant, path, train, held_out, args.steps, args.seed)
            before, after = result["before"], result["after"]
            print(
                f"| {variant} | {before['encoder_mlm']:.3f} -> {after['encoder_mlm']:.3f} "
                f"| {before['decoder_mlm']:.3f} -> {after['decoder_mlm']:.3f} | {result['cpu_s']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
