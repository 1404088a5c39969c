"""Our transfer protocol on the embeddings cached by ``benchmarks/senteval_reference.py``, beside SentEval's engine.

Reads each task with ``retromae_st.eval.senteval`` (our readers), looks every sentence up in ``<cache>/<task>.npz``
(a sentence missing from the cache is an error: both engines must see identical embeddings), runs our classifier
protocol and records the process CPU time per task. ``--protocol`` may be given several times. Writes
``<cache>/ours_<protocol>.json`` and prints the table with SentEval's numbers (``<cache>/senteval_engine/<task>.json``).

Usage (from the repository root, one thread):
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/transfer_vs_senteval.py --cache /work/runs/eval_cache \
        --protocol senteval [--protocol extended] [--tasks MR CR ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOWNSTREAM = REPO.parent / "shared" / "data" / "senteval" / "downstream"


def cached_embedder(cache: Path, task: str):
    data = np.load(cache / f"{task}.npz", allow_pickle=True)
    lookup = dict(zip(data["texts"].tolist(), data["embeddings"], strict=True))

    def embed(sentences):
        missing = [s for s in sentences if s not in lookup]
        if missing:
            raise KeyError(f"{task}: {len(missing)} sentences are not in the cache, e.g. {missing[0]!r}")
        return {s: lookup[s] for s in sentences}

    return embed


def run(cache: Path, downstream: Path, protocol: str, tasks: list[str] | None, kfold: int, seed: int) -> dict:
    from retromae_st.eval.senteval import evaluate_task, load_transfer_tasks

    path = cache / f"ours_{protocol}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    loaded, _ = load_transfer_tasks(downstream, tasks, protocol)
    for name, task in loaded.items():
        if name in results:
            continue
        start = time.process_time()
        result = evaluate_task(task, cached_embedder(cache, name), kfold=kfold, seed=seed, protocol=protocol)
        result["benchmark_cpu_seconds"] = time.process_time() - start
        results[name] = result
        print(
            f"{protocol} {name}: acc {result['accuracy']:.2f} ({result['benchmark_cpu_seconds']:.0f} CPU s)",
            flush=True,
        )
        path.write_text(json.dumps(results, indent=2, default=float))
    return results


def table(cache: Path, protocols: list[str]) -> str:
    reference = {
        p.stem: json.loads(p.read_text()) for p in sorted((cache / "senteval_engine").glob("*.json"))
    }
    ours = {
        p: json.loads((cache / f"ours_{p}.json").read_text())
        for p in protocols
        if (cache / f"ours_{p}.json").is_file()
    }
    header = (
        "| task | n | SentEval engine | CPU s | "
        + " | ".join(f"ours ({p}) | diff | CPU s" for p in ours)
        + " |"
    )
    lines = [header, "|" + "---|" * (4 + 3 * len(ours))]
    tasks = list(dict.fromkeys([*reference, *(t for r in ours.values() for t in r)]))
    for task in tasks:
        metrics = ["accuracy", "f1"] if task == "MRPC" else ["accuracy"]
        for metric in metrics:
            ref = reference.get(task, {})
            ref_value = ref.get("acc" if metric == "accuracy" else "f1")
            n = ref.get("ntest", "")
            cells = [f"{task}{' F1' if metric == 'f1' else ''}", str(n)]
            cells += [
                f"{ref_value:.2f}" if ref_value is not None else "",
                f"{ref['cpu_seconds']:.0f}" if ref else "",
            ]
            for result in ours.values():
                value = result.get(task, {}).get(metric)
                cells.append(f"{value:.2f}" if value is not None else "")
                cells.append(
                    f"{value - ref_value:+.2f}" if value is not None and ref_value is not None else ""
                )
                cpu = result.get(task, {}).get("benchmark_cpu_seconds")
                cells.append(f"{cpu:.0f}" if cpu is not None else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", type=Path, default=Path("/work/runs/eval_cache"))
    parser.add_argument("--downstream", type=Path, default=DOWNSTREAM)
    parser.add_argument("--protocol", action="append", choices=["senteval", "extended"], default=None)
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--kfold", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1111)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    protocols = args.protocol or ["senteval"]
    if not args.table_only:
        for protocol in protocols:
            run(args.cache, args.downstream, protocol, args.tasks, args.kfold, args.seed)
    print(table(args.cache, protocols))


if __name__ == "__main__":
    main()
