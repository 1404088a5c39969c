"""Command line interface: ``retromae-st <command> ...``.

Evaluation commands (see docs/evaluation.md)::

    retromae-st eval sts      --model PATH --data SENTEVAL_DOWNSTREAM_OR_FILE [...] --output DIR
    retromae-st eval transfer --model PATH --senteval SENTEVAL_DOWNSTREAM [--tasks MR CR ...] --output DIR
    retromae-st eval beir     --model PATH --data BEIR_FOLDER [...] [--index hnsw] --output DIR
    retromae-st eval all      --model PATH --senteval DIR --beir BEIR_FOLDER [...] --output DIR
    retromae-st eval compare  RESULT.json RESULT.json [...] --output DIR [--plot]

Pre-training::

    retromae-st pretrain --model PATH_OR_HUB_ID --corpus TEXT_FILE --output DIR [--max-steps N ...]

Each command group is added by its own ``add_<group>_commands(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("retromae_st")

DEFAULT_OUTPUT = Path("runs") / "eval"


# ----------------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------------


def load_model(path: str, device: str | None = None, max_seq_length: int | None = None):
    """Load a SentenceTransformer from a folder (or a hub name when online), with a clear error if it is missing."""
    from sentence_transformers import SentenceTransformer

    from retromae_st.dupmae_pooling import is_dupmae_folder, load_dupmae_model
    from retromae_st.model_location import model_location, naming_hub_failures

    if model_location(path) == "hub":
        with naming_hub_failures(path):
            model = SentenceTransformer(path, device=device)
    elif is_dupmae_folder(path):
        model = load_dupmae_model(path, device=device)
    else:
        model = SentenceTransformer(path, device=device)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def make_dense_retriever(model, args: argparse.Namespace):
    from retromae_st.eval.beir import DenseFaissRetriever

    return DenseFaissRetriever(
        model,
        batch_size=args.batch_size,
        cache_dir=None if args.no_cache else args.cache_dir,
        chunk_size=args.chunk_size,
        index_type=args.index,
        hnsw_m=args.hnsw_m,
        hnsw_ef_search=args.ef_search,
        show_progress_bar=True,
    )


def make_dupmae_retriever(model, args: argparse.Namespace):
    from retromae_st.dupmae_search import DupMAERetriever

    return DupMAERetriever(model, batch_size=args.batch_size, show_progress_bar=True)


# name -> factory(model, args) returning a retromae_st.eval.beir.Retriever.
RETRIEVERS: dict[str, Callable[[Any, argparse.Namespace], Any]] = {
    "dense": make_dense_retriever,
    "dupmae": make_dupmae_retriever,
}


def beir_folders(paths: Sequence[Path]) -> list[Path]:
    """Each path is a BEIR folder, or a folder whose sub-folders are BEIR folders (e.g. ``beir_subsets/``)."""
    folders = []
    for path in paths:
        if (path / "corpus.jsonl").is_file():
            folders.append(path)
        elif path.is_dir() and any((child / "corpus.jsonl").is_file() for child in path.iterdir()):
            folders.extend(sorted(child for child in path.iterdir() if (child / "corpus.jsonl").is_file()))
        else:
            raise FileNotFoundError(
                f"{path} is not a BEIR folder (no corpus.jsonl in it or in its sub-folders)"
            )
    return folders


# ----------------------------------------------------------------------------------------------------------------------
# eval
# ----------------------------------------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="SentenceTransformer folder (or hub name when online)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: auto)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--max-seq-length", type=int, default=None, help="override the model's max_seq_length"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="folder for <name>.json and <name>.md"
    )
    parser.add_argument("--name", default=None, help="run name (default: the model folder's name)")


def add_sts_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--data" if required else "--sts",
        type=Path,
        nargs="+",
        required=required,
        default=[],
        help="SentEval downstream/ folder, STS year folder, STS-B style csv/tsv file or datasets folder",
    )
    parser.add_argument("--similarity", default="cosine", choices=["cosine", "dot", "euclidean", "manhattan"])


def add_transfer_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    from retromae_st.eval.senteval import DEFAULT_SEED, TRANSFER_TASKS

    if required:
        parser.add_argument("--senteval", type=Path, required=True, help="SentEval downstream/ folder")
    parser.add_argument(
        "--tasks", nargs="+", choices=TRANSFER_TASKS, default=None, help="default: all present"
    )
    parser.add_argument(
        "--kfold", type=int, default=10, help="folds for CV tasks and C selection (SentEval: 10)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)


def add_beir_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--data" if required else "--beir",
        type=Path,
        nargs="+",
        required=required,
        default=[],
        help="BEIR-layout folder(s), or a folder of them",
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--retriever", choices=sorted(RETRIEVERS), default="dense")
    parser.add_argument("--index", choices=["flat", "hnsw"], default="flat", help="flat = exact search")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache") / "embeddings")
    parser.add_argument(
        "--no-cache", action="store_true", help="do not read or write cached corpus embeddings"
    )
    parser.add_argument("--chunk-size", type=int, default=10_000, help="documents encoded per chunk")
    parser.add_argument("--k-values", type=int, nargs="+", default=[1, 3, 5, 10, 100])
    parser.add_argument(
        "--keep-identical-ids",
        action="store_true",
        help="do not drop a retrieved document whose id equals the query id (BEIR/MTEB drop it)",
    )


def run_sts(model, paths: Sequence[Path], args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from retromae_st.eval.sts import evaluate_sts_task, read_sts_path

    tasks = {}
    for path in paths:
        tasks.update(read_sts_path(path))
    results = {}
    for name, task in tqdm(tasks.items(), desc="STS tasks", unit="task"):
        results[name] = evaluate_sts_task(model, task, batch_size=args.batch_size, similarity=args.similarity)
    return {"tasks": results, "similarity": args.similarity}


def run_transfer(model, senteval: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from retromae_st.eval.senteval import TRANSFER_TASKS, available_transfer_tasks, evaluate_transfer

    if not senteval.is_dir():
        raise FileNotFoundError(f"SentEval folder not found: {senteval}")
    names = args.tasks or available_transfer_tasks(senteval)
    if not names:
        raise FileNotFoundError(f"no transfer task found under {senteval} (expected e.g. MR/, CR/, SST/)")
    merged: dict[str, Any] = {"tasks": {}, "skipped": {}, "kfold": args.kfold, "seed": args.seed}
    for name in tqdm([n for n in TRANSFER_TASKS if n in names], desc="transfer tasks", unit="task"):
        result = evaluate_transfer(
            model, senteval, tasks=[name], kfold=args.kfold, seed=args.seed, batch_size=args.batch_size
        )
        merged["tasks"].update(result["tasks"])
        merged["skipped"].update(result["skipped"])
    return merged


def run_beir(model, paths: Sequence[Path], args: argparse.Namespace) -> dict[str, Any]:
    from retromae_st.eval.beir import evaluate_beir, load_beir_folder

    results = {}
    for folder in beir_folders(paths):
        logger.info(f"BEIR: {folder}")
        retriever = RETRIEVERS[args.retriever](model, args)
        dataset = load_beir_folder(folder, split=args.split)
        results[dataset.name] = evaluate_beir(
            retriever,
            dataset,
            split=args.split,
            k_values=args.k_values,
            ignore_identical_ids=not args.keep_identical_ids,
        )
        metrics = results[dataset.name]["metrics"]
        print(
            f"{dataset.name}: NDCG@10 {100 * metrics['NDCG@10']:.2f}  Recall@100 {100 * metrics['Recall@100']:.2f}"
        )
    return results


def finish_run(result: dict[str, Any], args: argparse.Namespace) -> int:
    from retromae_st.eval.report import result_to_markdown, save_result

    json_path, md_path = save_result(result, args.output, name=args.name)
    print(result_to_markdown(result))
    print(f"wrote {json_path} and {md_path}")
    return 0


def command_eval_sts(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.device, args.max_seq_length)
    return finish_run({"model": args.model, "sts": run_sts(model, args.data, args)}, args)


def command_eval_transfer(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.device, args.max_seq_length)
    return finish_run({"model": args.model, "transfer": run_transfer(model, args.senteval, args)}, args)


def command_eval_beir(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.device, args.max_seq_length)
    return finish_run({"model": args.model, "beir": run_beir(model, args.data, args)}, args)


def command_eval_all(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.device, args.max_seq_length)
    result: dict[str, Any] = {"model": args.model}
    result["sts"] = run_sts(model, [args.senteval, *args.sts], args)
    if not args.skip_transfer:
        result["transfer"] = run_transfer(model, args.senteval, args)
    if args.beir:
        result["beir"] = run_beir(model, args.beir, args)
    return finish_run(result, args)


def command_eval_compare(args: argparse.Namespace) -> int:
    from retromae_st.eval.report import compare_markdown, load_result, plot_comparison

    results = [load_result(path) for path in args.results]
    names = args.names or [path.stem for path in args.results]
    if len(names) != len(results):
        raise ValueError(f"--names got {len(names)} names for {len(results)} result files")
    table = compare_markdown(results, names)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "compare.md").write_text(table + "\n")
    print(f"wrote {args.output / 'compare.md'}")
    if args.plot:
        print(f"wrote {plot_comparison(results, args.output / 'compare.png', names)}")
    return 0


def add_eval_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``retromae-st eval {sts,transfer,beir,all,compare}``."""
    eval_parser = subparsers.add_parser(
        "eval", help="evaluate a model: STS, SentEval transfer, BEIR retrieval"
    )
    commands = eval_parser.add_subparsers(
        dest="eval_command", required=True, metavar="{sts,transfer,beir,all,compare}"
    )

    sts = commands.add_parser("sts", help="STS: Spearman/Pearson x100 of cosine vs gold scores")
    add_model_arguments(sts)
    add_sts_arguments(sts, required=True)
    sts.set_defaults(func=command_eval_sts)

    transfer = commands.add_parser("transfer", help="SentEval transfer tasks with logistic regression")
    add_model_arguments(transfer)
    add_transfer_arguments(transfer, required=True)
    transfer.set_defaults(func=command_eval_transfer)

    beir = commands.add_parser("beir", help="retrieval on BEIR-layout folders (NDCG@10, Recall@100)")
    add_model_arguments(beir)
    add_beir_arguments(beir, required=True)
    beir.set_defaults(func=command_eval_beir)

    everything = commands.add_parser("all", help="STS + transfer on a SentEval folder, and BEIR folders")
    add_model_arguments(everything)
    everything.add_argument("--senteval", type=Path, required=True, help="SentEval downstream/ folder")
    add_sts_arguments(everything, required=False)
    add_transfer_arguments(everything, required=False)
    everything.add_argument("--skip-transfer", action="store_true")
    add_beir_arguments(everything, required=False)
    everything.set_defaults(func=command_eval_all)

    compare = commands.add_parser("compare", help="lay several result JSON files side by side")
    compare.add_argument("results", type=Path, nargs="+", help="result JSON files written by eval commands")
    compare.add_argument("--names", nargs="+", default=None, help="column names (default: file stems)")
    compare.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    compare.add_argument("--plot", action="store_true", help="also write compare.png (matplotlib bar chart)")
    compare.set_defaults(func=command_eval_compare)


def command_pretrain(args: argparse.Namespace) -> int:
    from retromae_st.pretraining import pretrain

    result = pretrain(
        args.model,
        args.corpus,
        args.output,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        learning_rate=args.learning_rate,
        encoder_mask_ratio=args.encoder_mask_ratio,
        decoder_mask_ratio=args.decoder_mask_ratio,
        resume_from_checkpoint=True if args.resume else None,
        seed=args.seed,
        group_by_length=args.group_by_length,
        bf16={"auto": "auto", "on": True, "off": False}[args.bf16],
    )
    print(f"corpus rows dropped: {result.dropped}")
    print(f"sentence-transformers model: {result.sentence_transformer_dir}")
    if result.masked_lm_dir:
        print(f"BertForMaskedLM checkpoint: {result.masked_lm_dir}")
    return 0


def add_pretrain_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``retromae-st pretrain``."""
    pretrain = subparsers.add_parser(
        "pretrain", help="RetroMAE pre-training on a text file (one text per line)"
    )
    pretrain.add_argument("--model", required=True, help="BERT-family checkpoint folder or hub id")
    pretrain.add_argument("--corpus", required=True, help="UTF-8 text file, one passage per line")
    pretrain.add_argument("--output", required=True, help="writes final/ (ST), masked_lm/ and checkpoints/")
    pretrain.add_argument("--max-steps", type=int, default=1000)
    pretrain.add_argument("--batch-size", type=int, default=32)
    pretrain.add_argument("--max-seq-length", type=int, default=256)
    pretrain.add_argument("--learning-rate", type=float, default=1e-4)
    pretrain.add_argument("--encoder-mask-ratio", type=float, default=0.3)
    pretrain.add_argument("--decoder-mask-ratio", type=float, default=0.5)
    pretrain.add_argument("--seed", type=int, default=42)
    pretrain.add_argument(
        "--bf16",
        nargs="?",
        const="on",
        default="auto",
        choices=["auto", "on", "off"],
        help="bf16 autocast; auto (default): on for CUDA devices with bf16 support, off on CPU; --bf16: on",
    )
    pretrain.add_argument(
        "--no-group-by-length",
        dest="group_by_length",
        action="store_false",
        help="draw batches uniformly at random instead of grouping texts of similar length",
    )
    pretrain.add_argument("--resume", action="store_true", help="resume from the last checkpoint in OUTPUT")
    pretrain.set_defaults(func=command_pretrain)


# ----------------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retromae-st", description="RetroMAE / DupMAE for sentence-transformers"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_pretrain_commands(subparsers)
    add_eval_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"retromae-st: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
