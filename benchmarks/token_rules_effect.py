"""Measured effect of the token rules (``token_rules="authors"`` vs ``"skip_special"``) on the loss terms.

    OMP_NUM_THREADS=1 python benchmarks/token_rules_effect.py [--draws 10] [--batch-size 8] [--max-seq-length 128]

The all-MiniLM-L6-v2 encoder (real weights; its ST folder has no MLM head, so the head is a new one tied to
the word embeddings, seeded) with a seeded decoder, in eval mode (no dropout), on real lines of the shared
corpus. Two batches: the first ``--batch-size`` lines as they are (no ``[UNK]``), and the same lines with
emoji (``[UNK]`` for this vocabulary) put into half of them.

- RetroMAE: each term under each rule, averaged over ``--draws`` mask draws (draw ``i`` of both rules uses
  generator seed ``i``; on a batch without in-text special ids both rules give identical masks), and the
  relative norm of the difference of the total gradient, ``||g_authors - g_skip|| / ||g_skip||``.
- DupMAE: the BoW term and its gradient with the authors' pooling (positions ``1..L-1``, ``[SEP]``
  included; target counting ``[UNK]``) against the old one (non-special tokens), on the same masks; on the
  batch without ``[UNK]`` the only difference is the pooled ``[SEP]``. Relative differences of the BoW term,
  of its gradient and of the total gradient (every term).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import SHARED, minilm_path  # noqa: E402
from retromae_st import DupMAELoss, RetroMAELoss, load_cls_model  # noqa: E402

EMOJI = ["🙂", "🎉", "👍", "🚀"]


def corpus_lines(count: int) -> list[str]:
    lines = []
    with open(SHARED / "corpus" / "corpus.txt", encoding="utf-8") as handle:
        for line in handle:
            if len(line.split()) >= 12:
                lines.append(line.strip())
            if len(lines) == count:
                return lines
    return lines


def with_emoji(lines: list[str]) -> list[str]:
    """Every other line gets two emoji inside it (each one ``[UNK]``)."""
    out = []
    for i, line in enumerate(lines):
        if i % 2 == 0:
            words = line.split()
            words.insert(3, EMOJI[i % len(EMOJI)])
            words.insert(len(words) // 2, EMOJI[(i + 1) % len(EMOJI)])
            line = " ".join(words)
        out.append(line)
    return out


def gradient(loss: torch.nn.Module, value: torch.Tensor) -> torch.Tensor:
    parameters = [p for p in loss.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, parameters, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).flatten()
            for g, p in zip(grads, parameters, strict=True)
        ]
    )


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def losses(max_seq_length: int, kind):
    torch.manual_seed(0)
    model = load_cls_model(minilm_path(), max_seq_length=max_seq_length)
    built = {}
    for rules in ("authors", "skip_special"):
        torch.manual_seed(1)  # same decoder and head for both rules
        built[rules] = kind(model, token_rules=rules).eval()
    return model, built


def retromae_effect(lines: list[str], args) -> None:
    model, loss = losses(args.max_seq_length, RetroMAELoss)
    features = model.preprocess(lines)
    unk = int((features["input_ids"] == model.tokenizer.unk_token_id).sum())
    terms = {rules: {"encoder_mlm": [], "decoder_mlm": []} for rules in loss}
    gradient_differences = []
    for draw in range(args.draws):
        grads = {}
        for rules, rules_loss in loss.items():
            masks = rules_loss.make_masks(features, torch.Generator().manual_seed(draw))
            values = rules_loss.compute_loss_terms(features, masks)
            for name, value in values.items():
                terms[rules][name].append(value.item())
            grads[rules] = gradient(rules_loss, sum(values.values()))
        gradient_differences.append(relative(grads["authors"], grads["skip_special"]))
    print(f"  RetroMAE, {len(lines)} texts, {unk} [UNK], {args.draws} draws (mean ± sd over draws):")
    for name in ("encoder_mlm", "decoder_mlm"):
        authors, skip = terms["authors"][name], terms["skip_special"][name]
        differences = [a - s for a, s in zip(authors, skip, strict=True)]
        print(
            f"    {name:12s} authors {statistics.mean(authors):.4f}  skip_special {statistics.mean(skip):.4f}  "
            f"difference {statistics.mean(differences):+.4f} ± {statistics.pstdev(differences):.4f}"
        )
    print(
        f"    total gradient: relative difference {statistics.mean(gradient_differences):.4f} "
        f"(min {min(gradient_differences):.4f}, max {max(gradient_differences):.4f})"
    )


def dupmae_effect(lines: list[str], args) -> None:
    model, loss = losses(args.max_seq_length, DupMAELoss)
    features = model.preprocess(lines)
    unk = int((features["input_ids"] == model.tokenizer.unk_token_id).sum())
    bow_values, bow_gradients, total_gradients = [], [], []
    for draw in range(args.draws):
        # The same masks for both rules (the authors'), so that only the pooling and the target differ.
        masks = loss["authors"].make_masks(features, torch.Generator().manual_seed(draw))
        values, bow_grads, total_grads = {}, {}, {}
        for rules, rules_loss in loss.items():
            terms = rules_loss.compute_loss_terms(features, masks)
            values[rules] = terms["bow"].item()
            bow_grads[rules] = gradient(rules_loss, terms["bow"])
            terms = rules_loss.compute_loss_terms(features, masks)
            total_grads[rules] = gradient(rules_loss, sum(terms.values()))
        bow_values.append(abs(values["authors"] - values["skip_special"]) / values["skip_special"])
        bow_gradients.append(relative(bow_grads["authors"], bow_grads["skip_special"]))
        total_gradients.append(relative(total_grads["authors"], total_grads["skip_special"]))
    print(f"  DupMAE, {len(lines)} texts, {unk} [UNK], {args.draws} draws, same masks for both rules:")
    for name, values in (
        ("BoW term", bow_values),
        ("BoW gradient", bow_gradients),
        ("total gradient", total_gradients),
    ):
        print(
            f"    {name:15s} relative difference mean {statistics.mean(values):.4f} "
            f"(min {min(values):.4f}, max {max(values):.4f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = corpus_lines(args.batch_size)
    for name, batch in (("without [UNK]", lines), ("with [UNK]", with_emoji(lines))):
        print(f"batch {name}")
        retromae_effect(batch, args)
        dupmae_effect(batch, args)


if __name__ == "__main__":
    main()
