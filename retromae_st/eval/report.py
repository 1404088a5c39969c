"""Evaluation reports: one JSON file and one markdown table per run, side-by-side comparison and bar charts.

A run result is a dict ``{"model": str, "name": str, "sts": ..., "transfer": ..., "beir": {dataset: ...}}`` (any
section may be absent). :func:`headline_metrics` flattens it into ``{"STS STS12 all Spearman": 72.37, ...}``, which
the markdown tables, ``compare`` and the plots all use; the first word of a metric name is its family (STS, Transfer,
BEIR), and each family gets its own chart.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FAMILIES = ("STS", "Transfer", "BEIR")


def headline_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Flatten a run result into ``metric name -> value`` (STS and transfer x100, BEIR x100 too)."""
    from retromae_st.eval.beir import headline_metric_names

    metrics: dict[str, float] = {}
    for task, values in result.get("sts", {}).get("tasks", {}).items():
        for row in values.get("headlines") or [values["main"]]:
            metrics[f"STS {task} {row['setting']} Spearman"] = row["spearman"]
    for task, values in result.get("transfer", {}).get("tasks", {}).items():
        metrics[f"Transfer {task} acc"] = values["accuracy"]
        if "f1" in values and task == "MRPC":
            metrics[f"Transfer {task} F1"] = values["f1"]
    for dataset, values in result.get("beir", {}).items():
        for metric in headline_metric_names(values["metrics"]):
            metrics[f"BEIR {dataset} {metric}"] = 100 * values["metrics"][metric]
    return metrics


def metric_family(metric: str) -> str:
    return metric.split(" ", 1)[0]


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: float | None) -> str:
    """Two decimals; an empty cell for a missing value (never a zero or a dash that reads like a number)."""
    return "" if is_missing(value) else f"{value:.2f}"


def sts_markdown(sts: Mapping[str, Any]) -> list[str]:
    lines = [
        "### STS (Spearman / Pearson x100)",
        "",
        "| task | subset | n | skipped | Spearman | Pearson | file |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, values in sts["tasks"].items():
        for subset, scores in values["subsets"].items():
            lines.append(
                f"| {task} | {subset} | {scores['n']} | {scores['skipped']} | {format_value(scores['spearman'])} "
                f"| {format_value(scores['pearson'])} | {scores.get('source', '')} |"
            )
        if "all" in values:
            scores = values["all"]
            label = next(
                (h["setting"] for h in values.get("headlines", []) if h["setting"].startswith("all")), "all"
            )
            lines.append(
                f"| {task} | **{label}** | {scores['n']} | {scores['skipped']} "
                f"| **{format_value(scores['spearman'])}** | {format_value(scores['pearson'])} | |"
            )
        if "wmean_spearman" in values:
            lines.append(
                f"| {task} | wmean (SentEval) | | | {format_value(values['wmean_spearman'])} "
                f"| {format_value(values['wmean_pearson'])} | |"
            )
    missing = sts.get("missing_files") or []
    if missing:
        lines += ["", "Not found (left out): " + ", ".join(missing)]
    return lines


def transfer_markdown(transfer: Mapping[str, Any]) -> list[str]:
    lines = [
        f"### SentEval transfer (accuracy x100; protocol {transfer.get('protocol', 'extended')}, "
        f"{transfer.get('kfold')}-fold, seed {transfer.get('seed')})",
        "",
        "| task | classifier | accuracy | dev accuracy | F1 | unconverged fits | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, values in transfer["tasks"].items():
        fits = f"{values['unconverged_fits']} of {values['fits']}" if "fits" in values else ""
        lines.append(
            f"| {task} | {values.get('classifier', values.get('protocol', ''))} | {format_value(values['accuracy'])} "
            f"| {format_value(values.get('dev_accuracy'))} | {format_value(values.get('f1'))} | {fits} "
            f"| {format_value(values.get('seconds'))} |"
        )
    for task, reason in transfer.get("skipped", {}).items():
        lines.append(f"| {task} | skipped: {reason} | | | | | |")
    return lines


def beir_markdown(beir: Mapping[str, Any]) -> list[str]:
    from retromae_st.eval.beir import headline_metric_names

    names = list(
        dict.fromkeys(n for v in beir.values() for n in [*headline_metric_names(v["metrics"]), "MRR@10"])
    )
    lines = [
        "### BEIR (x100)",
        "",
        "| dataset | split | queries | corpus | "
        + " | ".join(names)
        + " | index | cache | passages/s | seconds |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|",
    ]
    for dataset, values in beir.items():
        m, counts, info = values["metrics"], values["counts"], values["retriever"]
        cells = [format_value(100 * m[n]) if n in m else "" for n in names]
        lines.append(
            f"| {dataset} | {values['split']} | {int(m['evaluated_queries'])} | {counts.get('corpus_size', '')} "
            f"| {' | '.join(cells)} | {info.get('index_type', '')} | {info.get('cache', '')} "
            f"| {format_value(info.get('passages_per_second'))} | {format_value(values.get('seconds'))} |"
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
    notes += [
        f"- {d}: {v['counts']['empty_queries']} judged queries have empty text"
        for d, v in beir.items()
        if v["counts"].get("empty_queries")
    ]
    return lines + ([""] + notes if notes else [])


def result_to_markdown(result: Mapping[str, Any]) -> str:
    """One run as markdown: a header, then a table per section present."""
    lines = [f"## {result.get('name') or result.get('model', 'model')}", ""]
    if result.get("model"):
        lines += [f"model: `{result['model']}`", ""]
    if result.get("created"):
        lines += [f"_{result['created']}_", ""]
    for key, render in (("sts", sts_markdown), ("transfer", transfer_markdown), ("beir", beir_markdown)):
        if result.get(key):
            lines += render(result[key]) + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Names and files
# ----------------------------------------------------------------------------------------------------------------------


def default_run_name(model: str) -> str:
    """The model path's last two components joined by ``__`` (``runs/exp1/final`` -> ``exp1__final``; a hub id
    ``org/model`` -> ``org__model``), so that every ``final/`` folder gets its own result file."""
    parts = [p for p in Path(str(model)).parts if p not in ("/", ".", "..")]
    return "__".join(parts[-2:]) or "model"


def run_name(result: Mapping[str, Any]) -> str:
    return str(result.get("name") or default_run_name(str(result.get("model", "model"))))


def result_paths(output_dir: str | Path, name: str) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    return output_dir / f"{name}.json", output_dir / f"{name}.md"


def check_output(output_dir: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Before any work: the folder can be created and written, and ``<name>.json`` / ``.md`` do not exist yet (unless
    ``overwrite``). Errors name the folder or the file."""
    output_dir = Path(output_dir)
    if any(sep in name for sep in ("/", os.sep)) or name in ("", ".", ".."):
        raise ValueError(f"run name {name!r} must be a plain file name (no '/')")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"output folder {output_dir} is not writable ({error.strerror})") from None
    paths = result_paths(output_dir, name)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; pass --name to keep both results, or --overwrite to replace it"
        )
    return paths


def save_result(
    result: dict[str, Any], output_dir: str | Path, name: str | None = None, overwrite: bool = True
) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``output_dir`` (JSON written atomically); returns both paths."""
    stem = name or run_name(result)
    result.setdefault("name", stem)
    result.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    json_path, md_path = check_output(output_dir, stem, overwrite=overwrite)
    tmp_path = json_path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(result, indent=2, default=_json_default))
    tmp_path.replace(json_path)
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


def unique_names(
    results: Sequence[Mapping[str, Any]], paths: Sequence[str | Path] | None = None
) -> list[str]:
    """A distinct column name per run: its run name, then the result file's name when two runs share it, then a
    counter."""
    names = [run_name(r) for r in results]
    if paths is not None and len(set(names)) < len(names):
        counts = Counter(names)
        names = [f"{n} ({Path(p).name})" if counts[n] > 1 else n for n, p in zip(names, paths, strict=True)]
    counts, seen = Counter(names), Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(f"{name} #{seen[name]}" if counts[name] > 1 else name)
    return unique


def check_names(names: Sequence[str], n_results: int) -> list[str]:
    names = list(names)
    if len(names) != n_results:
        raise ValueError(f"--names got {len(names)} names for {n_results} result files")
    repeated = [n for n, c in Counter(names).items() if c > 1]
    if repeated:
        raise ValueError(f"--names repeats {repeated[0]!r}; every run needs its own name")
    return names


# ----------------------------------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------------------------------


def comparison_rows(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, float]]]:
    tables = [headline_metrics(r) for r in results]
    metrics = list(dict.fromkeys(m for table in tables for m in table))
    metrics.sort(
        key=lambda m: FAMILIES.index(metric_family(m)) if metric_family(m) in FAMILIES else len(FAMILIES)
    )
    return metrics, tables


def best_cells(values: Sequence[float | None]) -> set[int]:
    """Indices to bold: the single best value as displayed (2 decimals); nothing when the best is tied or when fewer
    than two runs have the metric."""
    shown = [None if is_missing(v) else round(v, 2) for v in values]
    present = [v for v in shown if v is not None]
    if len(present) < 2:
        return set()
    best = max(present)
    winners = [i for i, v in enumerate(shown) if v == best]
    return set(winners) if len(winners) == 1 else set()


def compare_markdown(results: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> str:
    """Models side by side: one row per headline metric, one column per run, the unique best value in bold, an empty
    cell where a run lacks the metric."""
    names = check_names(names, len(results)) if names is not None else unique_names(results)
    metrics, tables = comparison_rows(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in metrics:
        values = [table.get(metric) for table in tables]
        bold = best_cells(values)
        cells = [f"**{format_value(v)}**" if i in bold else format_value(v) for i, v in enumerate(values)]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(
    results: Sequence[Mapping[str, Any]], path: str | Path, names: Sequence[str] | None = None
) -> list[Path]:
    """One horizontal grouped bar chart per metric family present (``<stem>-sts.png``, ``-transfer.png``,
    ``-beir.png`` next to ``path``): one group per metric, one bar per run with its value written at the end, no bar
    (and "missing") where a run lacks the metric, the legend below the chart. Returns the files written."""
    names = check_names(names, len(results)) if names is not None else unique_names(results)
    metrics, tables = comparison_rows(results)
    if not metrics:
        raise ValueError("nothing to plot: the results contain no metrics")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for family in dict.fromkeys(metric_family(m) for m in metrics):
        family_metrics = [m for m in metrics if metric_family(m) == family]
        target = path.with_name(f"{path.stem}-{family.lower()}{path.suffix or '.png'}")
        written.append(plot_family(family, family_metrics, tables, names, target))
    return written


def plot_family(
    family: str,
    metrics: Sequence[str],
    tables: Sequence[Mapping[str, float]],
    names: Sequence[str],
    path: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n_runs = len(names)
    bar = 0.8 / n_runs
    height = max(2.5, 0.32 * len(metrics) * n_runs + 0.4 * len(metrics) + 1.6)
    fig, ax = plt.subplots(figsize=(10, height))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    values = [[table.get(m) for m in metrics] for table in tables]
    present = [v for row in values for v in row if not is_missing(v)]
    low, high = min(0.0, min(present)), max(present)
    span = high - low or 1.0
    y = np.arange(len(metrics))
    for j, (name, row) in enumerate(zip(names, values, strict=True)):
        positions = y - 0.4 + bar * (j + 0.5)
        shown = [(p, v) for p, v in zip(positions, row, strict=True) if not is_missing(v)]
        ax.barh(
            [p for p, _ in shown],
            [v for _, v in shown],
            height=bar * 0.9,
            color=colors[j % len(colors)],
            label=name,
        )
        for p, v in zip(positions, row, strict=True):
            if is_missing(v):
                ax.text(low + 0.01 * span, p, "missing", va="center", ha="left", fontsize=8, color="grey")
            else:
                ax.text(v + 0.01 * span, p, f"{v:.2f}", va="center", ha="left", fontsize=9)
    ax.set_yticks(y)
    ax.set_yticklabels([m.split(" ", 1)[1] for m in metrics], fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(low, high + 0.12 * span)
    ax.set_xlabel({"STS": "Spearman x100", "Transfer": "accuracy / F1 x100"}.get(family, "score x100"))
    ax.set_title(f"{family}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.6 / height - 0.05), ncol=min(n_runs, 3), frameon=False
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
