"""Command line interface: ``retromae-st <command> ...``.

Evaluation commands (see docs/evaluation.md)::

    retromae-st eval sts      --model PATH --data SENTEVAL_DOWNSTREAM_OR_FILE [...] --output DIR
    retromae-st eval transfer --model PATH --senteval SENTEVAL_DOWNSTREAM [--tasks MR CR ...] --output DIR
    retromae-st eval beir     --model PATH --data BEIR_FOLDER [...] [--index hnsw] --output DIR
    retromae-st eval all      --model PATH --senteval DIR --beir BEIR_FOLDER [...] --output DIR
    retromae-st eval compare  RESULT.json RESULT.json [...] --output DIR [--plot]

Training (retromae_st/training_cli.py; every SentenceTransformerTrainingArguments field is a flag too)::

    retromae-st pretrain --method retromae|dupmae --model PATH_OR_HUB_ID --corpus FILE_OR_GLOB ... --output DIR
    retromae-st stage2 --model STAGE1/masked_lm --data msmarco=pairs.tsv nli=triplets.tsv --output DIR

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
    parser.add_argument(
        "--name",
        default=None,
        help="run name (default: the model path's last two components, e.g. runs/exp1/final -> exp1__final)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing <name>.json / <name>.md"
    )


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
    from retromae_st.eval.senteval import DEFAULT_SEED, PROTOCOLS, TRANSFER_TASKS

    if required:
        parser.add_argument("--senteval", type=Path, required=True, help="SentEval downstream/ folder")
    parser.add_argument(
        "--tasks", nargs="+", choices=TRANSFER_TASKS, default=None, help="default: all present"
    )
    parser.add_argument(
        "--kfold", type=int, default=10, help="folds for CV tasks and C selection (SentEval: 10)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="senteval",
        help="senteval (default): SentEval's features, C grids, data order and solver settings exactly; "
        "extended: [u, v, |u-v|, u*v] pair features, max_iter=1000, file order",
    )


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


def read_sts_data(paths: Sequence[Path]) -> dict[str, Any]:
    from retromae_st.eval.sts import read_sts_paths

    return read_sts_paths(paths)


def read_transfer_data(senteval: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    from retromae_st.eval.senteval import load_transfer_tasks

    return load_transfer_tasks(senteval, args.tasks, args.protocol)


def read_beir_data(paths: Sequence[Path], args: argparse.Namespace) -> list[Any]:
    from retromae_st.eval.beir import EmbeddingCache, check_k_values, load_beir_folder

    check_k_values(args.k_values)
    if args.retriever == "dense" and not args.no_cache:
        EmbeddingCache(args.cache_dir).check_writable()  # before the model loads and the corpus is encoded
    return [load_beir_folder(folder, split=args.split) for folder in beir_folders(paths)]


def run_sts(model, tasks: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from retromae_st.eval.sts import evaluate_sts

    return evaluate_sts(
        model, tasks, batch_size=args.batch_size, similarity=args.similarity, show_progress_bar=True
    )


def run_transfer(
    model, loaded: tuple[dict[str, Any], dict[str, str]], args: argparse.Namespace
) -> dict[str, Any]:
    from retromae_st.eval.senteval import evaluate_transfer_tasks

    tasks, skipped = loaded
    return evaluate_transfer_tasks(
        model,
        tasks,
        skipped,
        kfold=args.kfold,
        seed=args.seed,
        batch_size=args.batch_size,
        protocol=args.protocol,
        show_progress_bar=True,
    )


def run_beir(model, datasets: Sequence[Any], args: argparse.Namespace) -> dict[str, Any]:
    from retromae_st.eval.beir import evaluate_beir, headline_metric_names

    results = {}
    for dataset in datasets:
        if dataset.name in results:
            raise ValueError(
                f"two BEIR folders are named {dataset.name!r}: {results[dataset.name]['source']} and "
                f"{dataset.source}; pass only one of them"
            )
        logger.info(f"BEIR: {dataset.source}")
        retriever = RETRIEVERS[args.retriever](model, args)
        results[dataset.name] = evaluate_beir(
            retriever,
            dataset,
            split=args.split,
            k_values=args.k_values,
            ignore_identical_ids=not args.keep_identical_ids,
        )
        metrics = results[dataset.name]["metrics"]
        print(
            f"{dataset.name}: "
            + "  ".join(f"{m} {100 * metrics[m]:.2f}" for m in headline_metric_names(metrics))
        )
    return results


def report_left_out(result: dict[str, Any]) -> None:
    """Everything that was not evaluated, on one line (missing STS files, skipped transfer tasks)."""
    left_out = [f"STS file {path}" for path in result.get("sts", {}).get("missing_files", [])]
    left_out += [
        f"transfer {task} ({why})" for task, why in result.get("transfer", {}).get("skipped", {}).items()
    ]
    if left_out:
        print("retromae-st: left out: " + "; ".join(left_out), file=sys.stderr)


def prepare_output(args: argparse.Namespace) -> str:
    """The run name, after checking (before any work) that its files can be written and do not exist yet."""
    from retromae_st.eval.report import check_output, default_run_name

    name = args.name or default_run_name(args.model)
    check_output(args.output, name, overwrite=args.overwrite)
    return name


def finish_run(result: dict[str, Any], args: argparse.Namespace, name: str, started: float) -> int:
    import time

    from retromae_st.eval.report import result_to_markdown, save_result

    result["name"] = name
    result["seconds"] = time.perf_counter() - started
    json_path, md_path = save_result(result, args.output, name=name, overwrite=True)
    print(result_to_markdown(result))
    report_left_out(result)
    print(f"wrote {json_path} and {md_path}")
    return 0


def command_eval_sts(args: argparse.Namespace) -> int:
    import time

    started, name = time.perf_counter(), prepare_output(args)
    tasks = read_sts_data(args.data)
    model = load_model(args.model, args.device, args.max_seq_length)
    return finish_run({"model": args.model, "sts": run_sts(model, tasks, args)}, args, name, started)


def command_eval_transfer(args: argparse.Namespace) -> int:
    import time

    started, name = time.perf_counter(), prepare_output(args)
    loaded = read_transfer_data(args.senteval, args)
    model = load_model(args.model, args.device, args.max_seq_length)
    return finish_run(
        {"model": args.model, "transfer": run_transfer(model, loaded, args)}, args, name, started
    )


def command_eval_beir(args: argparse.Namespace) -> int:
    import time

    started, name = time.perf_counter(), prepare_output(args)
    datasets = read_beir_data(args.data, args)
    model = load_model(args.model, args.device, args.max_seq_length)
    return finish_run({"model": args.model, "beir": run_beir(model, datasets, args)}, args, name, started)


def command_eval_all(args: argparse.Namespace) -> int:
    import time

    started, name = time.perf_counter(), prepare_output(args)
    sts_tasks = read_sts_data([args.senteval, *args.sts])
    transfer = None if args.skip_transfer else read_transfer_data(args.senteval, args)
    datasets = read_beir_data(args.beir, args) if args.beir else []
    model = load_model(args.model, args.device, args.max_seq_length)
    result: dict[str, Any] = {"model": args.model, "sts": run_sts(model, sts_tasks, args)}
    if transfer is not None:
        result["transfer"] = run_transfer(model, transfer, args)
    if datasets:
        result["beir"] = run_beir(model, datasets, args)
    return finish_run(result, args, name, started)


def command_eval_compare(args: argparse.Namespace) -> int:
    from retromae_st.eval.report import (
        check_names,
        compare_markdown,
        load_result,
        plot_comparison,
        unique_names,
    )

    results = [load_result(path) for path in args.results]
    names = check_names(args.names, len(results)) if args.names else unique_names(results, args.results)
    args.output.mkdir(parents=True, exist_ok=True)
    table = compare_markdown(results, names)
    print(table)
    (args.output / "compare.md").write_text(table + "\n")
    print(f"wrote {args.output / 'compare.md'}")
    if args.plot:
        for path in plot_comparison(results, args.output / "compare.png", names):
            print(f"wrote {path}")
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
    compare.add_argument("--names", nargs="+", default=None, help="column names (default: the runs' names)")
    compare.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    compare.add_argument(
        "--plot",
        action="store_true",
        help="also write compare-sts.png, compare-transfer.png, compare-beir.png (one chart per family present)",
    )
    compare.set_defaults(func=command_eval_compare)


# Training commands (retromae_st/training_cli.py) ----------------------------------------------------------------------

#: command -> (help, "module:function" registering its full parser); the parser is built only when that command runs.
TRAINING_COMMANDS = {
    "pretrain": ("RetroMAE / DupMAE pre-training on a text corpus", "add_pretrain_parser"),
    "stage2": ("stage 2: RetroMAE + contrastive learning on pairs / NLI triplets", "add_stage2_parser"),
}


def add_training_commands(subparsers: argparse._SubParsersAction, argv: Sequence[str]) -> None:
    """Register ``retromae-st pretrain`` and ``stage2``: in full for the command being run, else as a
    one-line entry (their trainer flags need transformers, which ``retromae-st --help`` does not import)."""
    command = first_command(argv)
    for name, (help_text, builder) in TRAINING_COMMANDS.items():
        if name == command:
            from retromae_st import training_cli

            getattr(training_cli, builder)(subparsers, argv)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)


# ----------------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------------


def first_command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retromae-st", description="RetroMAE / DupMAE for sentence-transformers"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_training_commands(subparsers, argv)
    if first_command(argv) in (None, "eval"):
        add_eval_commands(subparsers)
    else:  # building the eval parsers imports the eval modules (slow); not needed for other commands
        subparsers.add_parser(
            "eval", help="evaluate a model: STS, SentEval transfer, BEIR retrieval", add_help=False
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
    except (FileNotFoundError, ValueError) as error:  # a bad --config-file
        print(f"retromae-st: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as error:
        print(f"retromae-st: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # permission denied, disk full, read-only file system: one line, no traceback
        print(f"retromae-st: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
