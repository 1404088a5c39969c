"""Issue #9, experiments 1-3: pre-training ablation from one random start, fine-tuning, stage 2.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/ablation.py --budget-minutes 25 \
        --pretrain-learning-rate 5e-4 --pretrain-warmup-steps 100 --seeds 0 1 2

(``--pretrain-variants`` / ``--pretrain-only`` / ``--seeds`` split the work over processes that share
``--output``; see ``benchmarks/RESULTS.md`` for the exact split used.)

1. Builds ONE random-init small BERT (4 layers, hidden 256, 4 heads, intermediate 1024, the
   all-MiniLM-L6-v2 WordPiece vocabulary and tokenizer), saves it, and pre-trains from that same start,
   on the same corpus (``../shared/data/corpus/corpus.txt``), with the same batch size, learning rate,
   schedule, length-grouped data order and the SAME budget of process CPU time (``time.process_time()``):

   - ``mlm``: masked language modelling only: the encoder half of RetroMAE (same whole-word masking at
     ``encoder_mask_ratio``, same MLM head) with no decoder, i.e. the ablation "RetroMAE minus decoder";
   - ``tsdae``: sentence-transformers' ``DenoisingAutoEncoderLoss`` (tied full-depth decoder with
     cross-attention to ``[CLS]``), inputs with 60% of the (whitespace) words deleted;
   - ``retromae``: :class:`retromae_st.RetroMAELoss`;
   - ``dupmae``: :class:`retromae_st.DupMAELoss` (evaluated with ``[CLS]`` and with the unified
     ``[CLS]`` + top-k OT representation through :class:`retromae_st.DupMAERetriever`).

   Each model (and the random init, the floor) is evaluated with CLS pooling: NDCG@10 x100 on every
   BEIR subset in ``../shared/data/beir_subsets`` and Spearman x100 on STS-B dev.
2. Each of them is then fine-tuned identically with ``MultipleNegativesRankingLoss`` on the SNLI
   (premise, entailment hypothesis) pairs of ``../shared/data/nli`` (``--finetune-steps`` x
   ``--finetune-batch-size``, same seed and data order for all), once per seed; same metrics. The one
   learning rate is chosen first, from ``--finetune-learning-rates``, by MNRL from the random init scored
   on STS-B *train* (never on the reported sets).
3. From ``retromae``: stage 2 with contrastive only (MNRL) vs the joint
   :class:`retromae_st.RetroMAEContrastiveLoss` (MNRL + RetroMAE on every column, the decoder of stage 1
   carried over), on the same pairs and steps, once per seed.

Every finished model writes ``OUTPUT/results/<key>.json`` at once, and an existing result is not
recomputed, so a killed run is resumed by starting it again. Each result keeps per-query NDCG@10, and
the report adds a paired bootstrap over queries for the comparisons the papers make (the spread that
the ~50 queries of a subset alone allow). ``--report`` only rebuilds ``OUTPUT/ablation.md``,
``OUTPUT/ablation.json`` and ``OUTPUT/ablation.png`` from those files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer.losses import (  # noqa: E402
    DenoisingAutoEncoderLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.training_args import BatchSamplers  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, TrainerCallback  # noqa: E402

from benchmarks.common import SHARED, minilm_path, read_snli_pairs  # noqa: E402
from retromae_st import (  # noqa: E402
    DupMAELoss,
    DupMAERetriever,
    RetroMAEContrastiveLoss,
    RetroMAELoss,
    build_dupmae_model,
    load_cls_model,
    pack_corpus,
    save_as_masked_lm,
)
from retromae_st.data import prepare_text_dataset  # noqa: E402
from retromae_st.eval.beir import (  # noqa: E402
    BeirDataset,
    DenseFaissRetriever,
    load_beir_folder,
    per_query_metrics,
    retrieve,
)
from retromae_st.eval.sts import StsPairs, StsTask, evaluate_sts, read_sts_path  # noqa: E402
from retromae_st.masking import bert_mask_replacement, whole_word_mask  # noqa: E402
from retromae_st.mlm_head import masked_lm_loss  # noqa: E402
from retromae_st.pretraining import length_grouped_batch_sampler  # noqa: E402

PRETRAIN_VARIANTS = ("mlm", "tsdae", "retromae", "dupmae")
START_POINTS = ("random",) + PRETRAIN_VARIANTS
logger = logging.getLogger("ablation")


# ----------------------------------------------------------------------------------------------------------------------
# Losses and callbacks
# ----------------------------------------------------------------------------------------------------------------------


class MLMOnlyLoss(RetroMAELoss):
    """RetroMAE's encoder half alone: whole-word MLM at ``encoder_mask_ratio`` with the same head, no decoder.

    The decoder built by the parent class is never run (and so never trained); masks are drawn from the
    loss's own generator, like RetroMAE's.
    """

    def forward(self, sentence_features, labels: Any = None) -> dict[str, torch.Tensor]:
        features = self.text_features(sentence_features)
        if self.training:
            self._attach_to_running_trainer()
        input_ids = features["input_ids"]
        generator = self.mask_generator(input_ids.device)
        masked = whole_word_mask(
            input_ids,
            features["attention_mask"],
            self.word_starts,
            self.special_tokens,
            self.encoder_mask_ratio,
            generator,
            token_rules=self.token_rules,
            boundary=self.boundary_tokens,
        )
        encoder_input_ids, labels = bert_mask_replacement(
            input_ids, masked, self.mask_token_id, self.vocab_size, generator
        )
        token_embeddings = self.encode(features, encoder_input_ids)
        return {"encoder_mlm": masked_lm_loss(self.mlm_head, token_embeddings, labels)}


class CpuBudget(TrainerCallback):
    """Stops training once the process has used ``seconds`` of CPU time since training began."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = 0.0
        self.used = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.used = time.process_time() - self.start
        if self.used >= self.seconds:
            control.should_training_stop = True
        return control


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def read_corpus(path: Path) -> Dataset:
    with open(path, encoding="utf-8") as handle:
        dataset = Dataset.from_dict({"text": handle.read().splitlines()})
    return prepare_text_dataset(dataset)[0]


def read_packed_corpus(path: Path, max_seq_length: int) -> Dataset:
    """The corpus packed by :func:`retromae_st.pack_corpus` into blocks of ``max_seq_length`` tokens of the
    MiniLM tokenizer (the file has no blank lines: consecutive lines are packed as one document)."""
    with open(path, encoding="utf-8") as handle:
        lines = Dataset.from_dict({"text": handle.read().splitlines()})
    blocks, stats = pack_corpus(lines, AutoTokenizer.from_pretrained(minilm_path()), max_seq_length)
    print(f"packed corpus: {stats}", flush=True)
    return blocks


def delete_words(text: str, rng: random.Random, deletion_ratio: float = 0.6) -> str:
    """TSDAE's noise: delete each whitespace word with probability ``deletion_ratio``, keeping at least one."""
    words = text.split()
    kept = [word for word in words if rng.random() >= deletion_ratio]
    return " ".join(kept) if kept else rng.choice(words)


def tsdae_dataset(corpus: Dataset, seed: int) -> Dataset:
    """``(noisy, text)`` pairs; one fixed noisy copy per sentence (drawn with ``seed``)."""
    rng = random.Random(seed)
    texts = corpus["text"]
    return Dataset.from_dict({"noisy": [delete_words(text, rng) for text in texts], "text": texts})


def shrink_beir(dataset: BeirDataset, num_queries: int, num_docs: int) -> BeirDataset:
    """A small slice for smoke tests: the first judged queries, their judged docs and filler docs."""
    qrels = dict(list(dataset.qrels.items())[:num_queries])
    keep = {doc for judged in qrels.values() for doc in judged if doc in dataset.corpus}
    keep.update(list(dataset.corpus)[:num_docs])
    corpus = {doc: text for doc, text in dataset.corpus.items() if doc in keep}
    qrels = {q: {d: r for d, r in judged.items() if d in corpus} for q, judged in qrels.items()}
    return BeirDataset(dataset.name, corpus, dataset.queries, qrels, dict(dataset.stats))


def shrink_sts(tasks: dict[str, StsTask], num_pairs: int) -> dict[str, StsTask]:
    small = {}
    for name, task in tasks.items():
        subsets = [
            StsPairs(p.name, p.sentences1[:num_pairs], p.sentences2[:num_pairs], p.scores[:num_pairs])
            for p in task.subsets
        ]
        small[name] = StsTask(task.name, subsets, task.concatenate)
    return small


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------


class Evaluator:
    """NDCG@10 x100 on BEIR subsets and Spearman x100 on STS-B dev, at one max_seq_length and batch size."""

    def __init__(
        self, beir: list[BeirDataset], sts: dict[str, StsTask], max_seq_length: int, batch_size: int
    ) -> None:
        self.beir = beir
        self.sts = sts
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size

    def __call__(
        self, model: SentenceTransformer, dupmae: bool = False, with_sts: bool = True
    ) -> dict[str, Any]:
        """``{"scores": {column: value}, "per_query": {dataset: {query id: NDCG@10}}}``; the per-query
        values are what :func:`paired_bootstrap` resamples."""
        model.max_seq_length = self.max_seq_length
        model.eval()
        row, per_query = {}, {}
        for dataset in self.beir:
            if dupmae:
                retriever = DupMAERetriever(model, batch_size=self.batch_size)
            else:
                retriever = DenseFaissRetriever(model, batch_size=self.batch_size, show_progress_bar=False)
            run = retrieve(retriever, dataset, top_k=10)
            scores = per_query_metrics(dataset.qrels, run, k_values=(10,))
            per_query[dataset.name] = {query: values["ndcg_cut_10"] for query, values in scores.items()}
            row[dataset.name] = 100 * statistics.mean(per_query[dataset.name].values())
        if with_sts and not dupmae:
            for name, result in evaluate_sts(model, self.sts, batch_size=self.batch_size)["tasks"].items():
                row[f"STS-B {name}"] = result["main"]["spearman"]
        return {"scores": row, "per_query": per_query}


def paired_bootstrap(
    first: dict[str, float], second: dict[str, float], samples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean difference ``first - second`` of per-query scores (x100) and its 95% bootstrap interval over
    queries: how much of a gap the sampling of the ~50 queries alone could make."""
    queries = sorted(set(first) & set(second))
    differences = torch.tensor([first[q] - second[q] for q in queries], dtype=torch.float64) * 100
    generator = torch.Generator().manual_seed(seed)
    resampled = differences[torch.randint(len(queries), (samples, len(queries)), generator=generator)].mean(1)
    low, high = torch.quantile(resampled, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return differences.mean().item(), low, high


# ----------------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------------


def build_random_init(output_dir: Path, seed: int) -> Path:
    """The shared start: a random-init 4-layer BERT (hidden 256) with MiniLM's vocabulary, as BertForMaskedLM."""
    if (output_dir / "config.json").is_file():
        return output_dir
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def training_arguments(output_dir: Path, seed: int, **kwargs) -> SentenceTransformerTrainingArguments:
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        weight_decay=0.01,
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_drop_last=True,
        use_cpu=True,
        **kwargs,
    )


def logged_losses(trainer: SentenceTransformerTrainer) -> list[dict[str, float]]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def pretrain_variant(
    variant: str, init_dir: Path, corpus: Dataset, output_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Pre-trains one variant from ``init_dir`` for ``args.budget_minutes`` of CPU time; saves it."""
    torch.manual_seed(args.pretrain_seed)
    model = load_cls_model(str(init_dir), max_seq_length=args.max_seq_length)
    dataset = corpus
    if variant == "mlm":
        loss = MLMOnlyLoss(model)
    elif variant == "tsdae":
        loss = DenoisingAutoEncoderLoss(model, decoder_name_or_path=str(init_dir), tie_encoder_decoder=True)
        dataset = tsdae_dataset(corpus, args.pretrain_seed)
    elif variant == "retromae":
        loss = RetroMAELoss(model)
    elif variant == "dupmae":
        loss = DupMAELoss(model)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    budget = CpuBudget(60 * args.budget_minutes)
    # Every variant sees the same batches: grouped by the token length of the clean text (TSDAE's rows are
    # in the same order), which spends the CPU budget on tokens rather than on padding. Packed blocks are
    # near-uniform in length: drawn at random, without grouping.
    if args.pack:
        sampler = BatchSamplers.BATCH_SAMPLER
    else:
        sampler = length_grouped_batch_sampler(corpus, model, args.max_seq_length)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_arguments(
            output_dir,
            args.pretrain_seed,
            max_steps=1_000_000,
            per_device_train_batch_size=args.pretrain_batch_size,
            learning_rate=args.pretrain_learning_rate,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=args.pretrain_warmup_steps,
            logging_steps=50,
            batch_sampler=sampler,
        ),
        train_dataset=dataset,
        loss=loss,
        callbacks=[budget],
    )
    trainer.train()
    model.save(str(output_dir / "final"))
    if variant != "tsdae":
        save_as_masked_lm(model, loss, str(output_dir / "masked_lm"))
    if variant == "retromae":
        torch.save(loss.decoder.state_dict(), output_dir / "decoder.pt")
    if variant == "dupmae":
        build_dupmae_model(loss, top_k=args.dupmae_top_k).save(str(output_dir / "unified"))
    history = logged_losses(trainer)
    return {
        "steps": trainer.state.global_step,
        "cpu_seconds": budget.used,
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "loss_history": history,
    }


def start_dir(point: str, init_dir: Path, output: Path) -> Path:
    """Where fine-tuning of ``point`` starts: the BertForMaskedLM folder, or TSDAE's ST folder."""
    if point == "random":
        return init_dir
    if point == "tsdae":
        return output / "pretrain" / point / "final"
    return output / "pretrain" / point / "masked_lm"


def finetune(
    start: Path,
    pairs: Dataset,
    seed: int,
    args: argparse.Namespace,
    learning_rate: float,
    joint: bool = False,
    decoder_state: Path | None = None,
) -> tuple[SentenceTransformer, dict[str, Any]]:
    """MNRL (or, with ``joint``, RetroMAEContrastiveLoss) for ``args.finetune_steps`` steps from ``start``."""
    torch.manual_seed(seed)
    model = load_cls_model(str(start), max_seq_length=args.max_seq_length)
    if joint:
        mae = RetroMAELoss(model)
        if decoder_state is not None:
            mae.decoder.load_state_dict(torch.load(decoder_state, weights_only=True))
        loss = RetroMAEContrastiveLoss(model, mae_loss=mae)
    else:
        loss = MultipleNegativesRankingLoss(model)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_arguments(
            Path(args.output) / "tmp",
            seed,
            max_steps=args.finetune_steps,
            per_device_train_batch_size=args.finetune_batch_size,
            learning_rate=learning_rate,
            warmup_ratio=0.1,
            logging_steps=25,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
        ),
        train_dataset=pairs,
        loss=loss,
    )
    start_cpu = time.process_time()
    trainer.train()
    history = logged_losses(trainer)
    return model, {
        "steps": trainer.state.global_step,
        "cpu_seconds": time.process_time() - start_cpu,
        "learning_rate": learning_rate,
        "last_loss": history[-1]["loss"] if history else None,
        "loss_history": history,
    }


def select_finetune_learning_rate(
    init_dir: Path, pairs: Dataset, results: Results, args: argparse.Namespace
) -> float:
    """Chooses the one fine-tuning learning rate, before any fine-tuning run is scored: MNRL from the random
    init (seed 0) with each of ``args.finetune_learning_rates``, scored by Spearman on the first
    ``args.selection_pairs`` pairs of STS-B *train*, never on STS-B dev or the BEIR sets that the tables
    report. Every start point and the stage-2 runs then use the chosen rate."""
    selection = shrink_sts(read_sts_path(SHARED / "stsb" / "sts-train.csv"), args.selection_pairs)
    if args.smoke:
        selection = shrink_sts(selection, 100)
    chosen, best = args.finetune_learning_rates[0], float("-inf")
    for learning_rate in args.finetune_learning_rates:
        key = f"lr-select-{learning_rate:g}"
        if not results.done(key):
            model, record = finetune(init_dir, pairs, 0, args, learning_rate)
            model.max_seq_length = args.eval_max_seq_length
            tasks = evaluate_sts(model, selection, batch_size=args.eval_batch_size)["tasks"]
            record["scores"] = {"STS-B train": next(iter(tasks.values()))["main"]["spearman"]}
            results.save(key, record)
        score = results.load(key)["scores"]["STS-B train"]
        if score > best:
            chosen, best = learning_rate, score
    print(f"fine-tuning learning rate: {chosen:g} (STS-B train Spearman {best:.2f})", flush=True)
    return chosen


class Results:
    """One JSON file per finished model under ``OUTPUT/results``; existing ones are skipped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def done(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, record: dict[str, Any]) -> None:
        tmp = self.path(key).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.path(key))
        scores = {k: round(v, 2) for k, v in record["scores"].items()}
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {scores} (cpu {time.process_time():.0f}s)", flush=True)

    def load(self, key: str) -> dict[str, Any]:
        return json.loads(self.path(key).read_text())

    def load_all(self) -> dict[str, dict[str, Any]]:
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.folder.glob("*.json"))}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    output = Path(args.output)
    results = Results(output / "results")
    beir = [load_beir_folder(p) for p in sorted((SHARED / "beir_subsets").iterdir()) if p.is_dir()]
    sts = read_sts_path(SHARED / "stsb" / "sts-dev.csv")
    if args.smoke:
        beir = [shrink_beir(dataset, 5, 200) for dataset in beir]
        sts = shrink_sts(sts, 100)
    evaluate = Evaluator(beir, sts, args.eval_max_seq_length, args.eval_batch_size)
    init_dir = build_random_init(output / "random_init", args.init_seed)
    if args.pack:
        corpus = read_packed_corpus(SHARED / "corpus" / "corpus.txt", args.max_seq_length)
    else:
        corpus = read_corpus(SHARED / "corpus" / "corpus.txt")
    pairs = read_snli_pairs(SHARED / "nli" / "snli_devtest_pairs.tsv")
    if args.smoke:
        corpus = corpus.select(range(min(2000, len(corpus))))

    # Experiment 1: pre-training from the same start, same CPU budget.
    if "random" in args.pretrain_variants and not results.done("pretrain-random"):
        cpu = time.process_time()
        record = evaluate(load_cls_model(str(init_dir)))
        results.save("pretrain-random", {**record, "eval_cpu_seconds": time.process_time() - cpu})
    for variant in PRETRAIN_VARIANTS:
        key = f"pretrain-{variant}"
        if variant not in args.pretrain_variants or results.done(key):
            continue
        record = pretrain_variant(variant, init_dir, corpus, output / "pretrain" / variant, args)
        record["corpus"] = (
            f"packed into {args.max_seq_length}-token blocks" if args.pack else "one line per example"
        )
        cpu = time.process_time()
        record.update(evaluate(load_cls_model(str(output / "pretrain" / variant / "final"))))
        record["eval_cpu_seconds"] = time.process_time() - cpu
        results.save(key, record)
    if "dupmae" in args.pretrain_variants and not results.done("pretrain-dupmae-unified"):
        from retromae_st import load_dupmae_model

        unified = load_dupmae_model(str(output / "pretrain" / "dupmae" / "unified"), device="cpu")
        results.save("pretrain-dupmae-unified", evaluate(unified, dupmae=True))
    if args.backfill_per_query:
        backfill_per_query(results, evaluate, init_dir, output)
    if args.pretrain_only:
        return

    # Experiments 2 and 3, seed by seed so that a cut-off run leaves complete seeds; within a seed the
    # stage-2 pair (retromae + MNRL vs joint) first, the random-init floor last.
    retromae_dir = output / "pretrain" / "retromae"
    learning_rate = select_finetune_learning_rate(init_dir, pairs, results, args)
    for seed in args.seeds:
        for point in args.finetune_points:
            key = f"stage2-joint-seed{seed}" if point == "joint" else f"finetune-{point}-seed{seed}"
            if results.done(key):
                continue
            if point == "joint":
                model, record = finetune(
                    retromae_dir / "masked_lm",
                    pairs,
                    seed,
                    args,
                    learning_rate,
                    joint=True,
                    decoder_state=retromae_dir / "decoder.pt",
                )
            else:
                model, record = finetune(start_dir(point, init_dir, output), pairs, seed, args, learning_rate)
            record.update(evaluate(model))
            results.save(key, record)
    report(args)


def backfill_per_query(results: Results, evaluate: Evaluator, init_dir: Path, output: Path) -> None:
    """Adds per-query NDCG@10 to experiment-1 results written before the evaluator kept it (BEIR only;
    the averages must come out as stored)."""
    from retromae_st import load_dupmae_model

    for point in ("random", *PRETRAIN_VARIANTS, "dupmae-unified"):
        key = f"pretrain-{point}"
        if not results.done(key) or "per_query" in results.load(key):
            continue
        record = results.load(key)
        if point == "dupmae-unified":
            model = load_dupmae_model(str(output / "pretrain" / "dupmae" / "unified"), device="cpu")
        else:
            model = load_cls_model(
                str(init_dir if point == "random" else output / "pretrain" / point / "final")
            )
        again = evaluate(model, dupmae=point == "dupmae-unified", with_sts=False)
        for name, value in again["scores"].items():
            if abs(value - record["scores"][name]) > 1e-6:
                raise RuntimeError(f"{key}: {name} re-evaluated as {value}, stored {record['scores'][name]}")
        record["per_query"] = again["per_query"]
        results.save(key, record)


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def format_extra(values: list[Any]) -> str:
    """The mean of a logged number over the records (seeds), or "–" where it was not logged."""
    values = [value for value in values if value is not None]
    if not values:
        return "–"
    mean = statistics.mean(values)
    return f"{mean:.0f}" if abs(mean) >= 100 else f"{mean:.3g}"


def table(
    rows: dict[str, list[dict[str, Any]]], columns: list[str], extra: dict[str, str], seeds: bool = False
) -> str:
    header = ["model", *columns, *extra, *(["seeds"] if seeds else [])]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, records in rows.items():
        cells = [
            mean_spread([r["scores"][c] for r in records]) if c in records[0]["scores"] else "–"
            for c in columns
        ]
        cells += [format_extra([r.get(field) for r in records]) for field in extra.values()]
        cells += [str(len(records))] if seeds else []
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grouped(all_results: dict[str, dict[str, Any]], prefix: str) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, record in all_results.items():
        if key.startswith(prefix):
            name = key[len(prefix) :].rsplit("-seed", 1)[0]
            groups.setdefault(name, []).append(record)
    return groups


BOOTSTRAP_PAIRS = [
    ("pre-trained retromae", "pre-trained mlm"),
    ("pre-trained dupmae", "pre-trained mlm"),
    ("pre-trained retromae", "pre-trained tsdae"),
    ("pre-trained dupmae", "pre-trained retromae"),
    ("pre-trained dupmae-unified", "pre-trained retromae"),
    ("pre-trained dupmae-unified", "pre-trained dupmae"),
    ("pre-trained retromae", "pre-trained random"),
    ("fine-tuned retromae", "fine-tuned mlm"),
    ("fine-tuned dupmae", "fine-tuned mlm"),
    ("fine-tuned retromae", "fine-tuned random"),
    ("stage 2 retromae + joint MAE + MNRL", "stage 2 retromae + MNRL (contrastive only)"),
]


def per_query_mean(records: list[dict[str, Any]], dataset: str) -> dict[str, float] | None:
    """Per-query NDCG@10 averaged over the records (seeds); ``None`` if a record lacks it."""
    if any(dataset not in r.get("per_query", {}) for r in records):
        return None
    queries = set.intersection(*(set(r["per_query"][dataset]) for r in records))
    return {q: statistics.mean(r["per_query"][dataset][q] for r in records) for q in queries}


def bootstrap_table(rows: dict[str, list[dict[str, Any]]], pairs: list[tuple[str, str]]) -> str:
    datasets = sorted({name for records in rows.values() for r in records for name in r.get("per_query", {})})
    if not datasets:
        return "(no per-query results: run with --backfill-per-query)"
    lines = ["| comparison | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
    for first, second in pairs:
        if first not in rows or second not in rows:
            continue
        cells = []
        for dataset in datasets:
            a, b = per_query_mean(rows[first], dataset), per_query_mean(rows[second], dataset)
            if a is None or b is None:
                cells.append("–")
                continue
            mean, low, high = paired_bootstrap(a, b)
            cells.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]")
        lines.append(f"| {first} − {second} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(args: argparse.Namespace) -> None:
    output = Path(args.output)
    all_results = Results(output / "results").load_all()
    if not all_results:
        print("no results yet")
        return
    columns = list(all_results["pretrain-random"]["scores"])
    pretrain = grouped(all_results, "pretrain-")
    order = ["random", "mlm", "tsdae", "retromae", "dupmae", "dupmae-unified"]
    pretrain = {name: pretrain[name] for name in order if name in pretrain}
    finetuned = grouped(all_results, "finetune-")
    finetuned = {name: finetuned[name] for name in START_POINTS if name in finetuned}
    stage2 = {}
    if "retromae" in finetuned:
        stage2["retromae + MNRL (contrastive only)"] = finetuned["retromae"]
    joint = grouped(all_results, "stage2-").get("joint")
    if joint:
        stage2["retromae + joint MAE + MNRL"] = joint
    selection = {
        f"lr {key[len('lr-select-') :]}": [record]
        for key, record in all_results.items()
        if key.startswith("lr-select-")
    }
    sections = [
        "### Fine-tuning learning rate, chosen on STS-B train from the random init (MNRL, seed 0)",
        table(selection, ["STS-B train"], {"last logged MNRL loss": "last_loss"})
        if selection
        else "(not run)",
        "### Experiment 1: zero-shot, after pre-training (CLS pooling; dupmae-unified = [CLS] + top-k OT)",
        table(pretrain, columns, {"steps": "steps", "CPU s": "cpu_seconds"}),
        "### Experiment 2: after MNRL fine-tuning (mean ± sd over fine-tuning seeds)",
        table(finetuned, columns, {"last logged loss": "last_loss"}, seeds=True),
        "### Experiment 3: stage 2 from retromae (mean ± sd over fine-tuning seeds)",
        table(stage2, columns, {"last logged loss": "last_loss"}, seeds=True),
    ]
    sections += [
        "### Paired bootstrap over queries: NDCG@10 difference x100 [95% interval]",
        bootstrap_table(
            {f"pre-trained {name}": records for name, records in pretrain.items()}
            | {f"fine-tuned {name}": records for name, records in finetuned.items()}
            | {f"stage 2 {name}": records for name, records in stage2.items()},
            BOOTSTRAP_PAIRS,
        ),
    ]
    text = "\n\n".join(sections) + "\n"
    print(text)
    (output / "ablation.md").write_text(text)
    (output / "ablation.json").write_text(json.dumps(all_results, indent=2))
    plot(
        output / "ablation.png",
        columns,
        [("pre-trained (zero-shot)", pretrain), ("fine-tuned", finetuned), ("stage 2", stage2)],
    )


def plot(path: Path, columns: list[str], panels: list[tuple[str, dict[str, list[dict[str, Any]]]]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    panels = [(title, rows) for title, rows in panels if rows]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    width = 0.8 / len(columns)
    for axis, (title, rows) in zip(axes[0], panels, strict=True):
        names = list(rows)
        for index, column in enumerate(columns):
            means, spreads = [], []
            for name in names:
                values = [r["scores"].get(column, float("nan")) for r in rows[name]]
                means.append(statistics.mean(values))
                spreads.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            positions = [i + (index - (len(columns) - 1) / 2) * width for i in range(len(names))]
            axis.bar(positions, means, width, yerr=spreads, capsize=2, label=column)
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels([name.replace(" + ", "\n+ ") for name in names], fontsize=8, rotation=20)
        axis.set_title(title)
        axis.set_ylabel("NDCG@10 x100 / Spearman x100")
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def anisotropy(args: argparse.Namespace, num_sentences: int = 64) -> None:
    """Mean / min pairwise cosine of the CLS embeddings of the first SNLI premises, per pre-trained model:
    how collapsed each [CLS] is (1.0 = every sentence gets the same direction)."""
    torch.set_num_threads(1)
    output = Path(args.output)
    sentences = read_snli_pairs(SHARED / "nli" / "snli_devtest_pairs.tsv")["anchor"][:num_sentences]
    off_diagonal = ~torch.eye(len(sentences), dtype=torch.bool)
    for point in START_POINTS:
        folder = start_dir(point, output / "random_init", output)
        if not folder.exists():
            continue
        embeddings = load_cls_model(str(folder)).encode(
            sentences, convert_to_tensor=True, normalize_embeddings=True
        )
        cosines = (embeddings @ embeddings.T)[off_diagonal]
        print(f"| {point} | {cosines.mean():.5f} | {cosines.min():.5f} | {cosines.std():.5f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="runs/ablation")
    parser.add_argument(
        "--budget-minutes", type=float, default=4.0, help="CPU minutes of pre-training per variant"
    )
    parser.add_argument("--max-seq-length", type=int, default=128, help="training")
    parser.add_argument("--eval-max-seq-length", type=int, default=64)
    parser.add_argument("--pretrain-batch-size", type=int, default=16)
    parser.add_argument("--pretrain-learning-rate", type=float, default=1e-4)
    parser.add_argument("--pretrain-warmup-steps", type=int, default=50)
    parser.add_argument("--pretrain-seed", type=int, default=0)
    parser.add_argument("--init-seed", type=int, default=0)
    parser.add_argument("--dupmae-top-k", type=int, default=256)
    parser.add_argument("--finetune-steps", type=int, default=400)
    parser.add_argument("--finetune-batch-size", type=int, default=32)
    parser.add_argument(
        "--finetune-learning-rates",
        type=float,
        nargs="+",
        default=[1e-4, 3e-4, 1e-3],
        help="candidates; the one with the best STS-B *train* Spearman from the random init is used",
    )
    parser.add_argument("--selection-pairs", type=int, default=1000, help="STS-B train pairs for the choice")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning / stage-2 seeds")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny corpus and eval slices, to test the script"
    )
    parser.add_argument(
        "--pretrain-variants",
        nargs="+",
        choices=START_POINTS,
        default=list(START_POINTS),
        help="which start points this process pre-trains and scores (to split the work over processes)",
    )
    parser.add_argument("--pretrain-only", action="store_true", help="stop after experiment 1")
    parser.add_argument(
        "--pack",
        action="store_true",
        help="pre-train on the corpus packed into --max-seq-length-token blocks (retromae_st.pack_corpus; "
        "random batches, no length grouping) instead of one line per example",
    )
    parser.add_argument(
        "--finetune-points",
        nargs="+",
        choices=("retromae", "joint", "mlm", "dupmae", "tsdae", "random"),
        default=["retromae", "joint", "mlm", "dupmae", "tsdae", "random"],
        help="experiment 2/3 runs this process does, in this order (joint = stage 2 from retromae)",
    )
    parser.add_argument(
        "--backfill-per-query",
        action="store_true",
        help="re-run the BEIR evaluation of experiment-1 results that lack per-query NDCG@10",
    )
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot")
    parser.add_argument(
        "--anisotropy", action="store_true", help="only print how collapsed each pre-trained [CLS] is"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.report:
        report(args)
    elif args.anisotropy:
        anisotropy(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
