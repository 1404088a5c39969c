"""Evaluation reports: one JSON file and one markdown table per run, side-by-side comparison and a bar chart.

A run result is a dict ``{"model": str, "sts": ..., "transfer": ..., "beir": {dataset: ...}}`` (any section may be
absent). :func:`headline_metrics` flattens it into ``{"STS12 (all) Spearman": 72.37, ...}``, which the markdown
tables, ``--compare`` and the plot all use.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def headline_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Flatten a run result into ``metric name -> value`` (STS and transfer x100, BEIR x100 too)."""
    metrics: dict[str, float] = {}
    for task, values in result.get("sts", {}).get("tasks", {}).items():
        main = values["main"]
        metrics[f"STS {task} ({main['setting']}) Spearman"] = main["spearman"]
    for task, values in result.get("transfer", {}).get("tasks", {}).items():
        metrics[f"Transfer {task} acc"] = values["accuracy"]
        if "f1" in values and task == "MRPC":
            metrics[f"Transfer {task} F1"] = values["f1"]
    for dataset, values in result.get("beir", {}).items():
        for metric in ("NDCG@10", "Recall@100"):
            if metric in values["metrics"]:
                metrics[f"BEIR {dataset} {metric}"] = 100 * values["metrics"][metric]
    return metrics


def format_value(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def sts_markdown(sts: Mapping[str, Any]) -> list[str]:
    lines = [
        "### STS (Spearman / Pearson x100)",
        "",
        "| task | subset | n | skipped | Spearman | Pearson |",
        "|---|---|---|---|---|---|",
    ]
    for task, values in sts["tasks"].items():
        for subset, scores in values["subsets"].items():
            lines.append(
                f"| {task} | {subset} | {scores['n']} | {scores['skipped']} | {format_value(scores['spearman'])} "
                f"| {format_value(scores['pearson'])} |"
            )
        if "all" in values:
            scores = values["all"]
            lines.append(
                f"| {task} | **all** | {scores['n']} | {scores['skipped']} | **{format_value(scores['spearman'])}** "
                f"| {format_value(scores['pearson'])} |"
            )
        lines.append(
            f"| {task} | wmean (SentEval) | | | {format_value(values['wmean_spearman'])} "
            f"| {format_value(values['wmean_pearson'])} |"
        )
    return lines


def transfer_markdown(transfer: Mapping[str, Any]) -> list[str]:
    lines = [
        f"### SentEval transfer (accuracy x100; {transfer.get('kfold')}-fold, seed {transfer.get('seed')})",
        "",
        "| task | protocol | accuracy | dev accuracy | F1 |",
        "|---|---|---|---|---|",
    ]
    for task, values in transfer["tasks"].items():
        lines.append(
            f"| {task} | {values.get('protocol', '')} | {format_value(values['accuracy'])} "
            f"| {format_value(values.get('dev_accuracy'))} | {format_value(values.get('f1'))} |"
        )
    for task, reason in transfer.get("skipped", {}).items():
        lines.append(f"| {task} | skipped: {reason} | | | |")
    return lines


def beir_markdown(beir: Mapping[str, Any]) -> list[str]:
    lines = [
        "### BEIR (x100)",
        "",
        "| dataset | split | queries | corpus | NDCG@10 | Recall@100 | MRR@10 | index | cache | passages/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, values in beir.items():
        m, counts, info = values["metrics"], values["counts"], values["retriever"]
        speed = info.get("passages_per_second")
        lines.append(
            f"| {dataset} | {values['split']} | {int(m['evaluated_queries'])} | {counts.get('corpus_size', '')} "
            f"| {100 * m['NDCG@10']:.2f} | {100 * m['Recall@100']:.2f} | {100 * m['MRR@10']:.2f} "
            f"| {info.get('index_type', '')} | {info.get('cache', '')} | {format_value(speed)} |"
        )
    notes = [
        f"- {d}: HNSW recall@100 vs exact search = {v['retriever']['hnsw_recall_vs_exact']:.4f}"
        for d, v in beir.items()
        if "hnsw_recall_vs_exact" in v["retriever"]
    ]
    notes += [
        f"- {d}: {v['counts']['qrels_unknown_doc_judgements']} judgements name unknown documents"
        for d, v in beir.items()
        if v["counts"].get("qrels_unknown_doc_judgements")
    ]
    return lines + ([""] + notes if notes else [])


def result_to_markdown(result: Mapping[str, Any]) -> str:
    """One run as markdown: a header, then a table per section present."""
    lines = [f"## {result.get('model', 'model')}", ""]
    if result.get("created"):
        lines += [f"_{result['created']}_", ""]
    for key, render in (("sts", sts_markdown), ("transfer", transfer_markdown), ("beir", beir_markdown)):
        if result.get(key):
            lines += render(result[key]) + [""]
    return "\n".join(lines)


def run_name(result: Mapping[str, Any]) -> str:
    return Path(str(result.get("model", "model"))).name or str(result.get("model"))


def save_result(result: dict[str, Any], output_dir: str | Path, name: str | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``output_dir``; returns both paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    stem = name or run_name(result)
    json_path, md_path = output_dir / f"{stem}.json", output_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2, default=_json_default))
    md_path.write_text(result_to_markdown(result))
    return json_path, md_path


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def load_result(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a JSON result file ({error.msg} at line {error.lineno})") from None


def compare_markdown(results: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> str:
    """Models side by side: one row per headline metric, one column per run, best value in bold."""
    names = list(names or [run_name(r) for r in results])
    tables = [headline_metrics(r) for r in results]
    metrics = list(dict.fromkeys(m for table in tables for m in table))
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in metrics:
        values = [table.get(metric) for table in tables]
        present = [v for v in values if v is not None]
        best = max(present) if present else None
        cells = [
            f"**{format_value(v)}**" if v is not None and v == best and len(present) > 1 else format_value(v)
            for v in values
        ]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(
    results: Sequence[Mapping[str, Any]], path: str | Path, names: Sequence[str] | None = None
) -> Path:
    """Grouped bar chart of the headline metrics (one group per metric, one bar per model), saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(names or [run_name(r) for r in results])
    tables = [headline_metrics(r) for r in results]
    metrics = list(dict.fromkeys(m for table in tables for m in table))
    if not metrics:
        raise ValueError("nothing to plot: the results contain no metrics")
    x = np.arange(len(metrics))
    width = 0.8 / len(tables)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(metrics) * len(tables) + 2), 4.5))
    for i, (name, table) in enumerate(zip(names, tables, strict=True)):
        ax.bar(x + i * width, [table.get(m, 0.0) for m in metrics], width, label=name)
    ax.set_xticks(x + width * (len(tables) - 1) / 2)
    ax.set_xticklabels(metrics, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("score (x100)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
