"""Plot ms/step vs sequence length from ``benchmarks/train_step.py --json`` output.

python benchmarks/plot_train_step.py results.jsonl [more.jsonl ...] --out benchmarks/train_step.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLES = {"baseline": "o--", "ours": "s-", "ours-bf16": "^-", "dupmae": "d-"}
COLORS = {"baseline": "C0", "ours": "C2", "ours-bf16": "C3", "dupmae": "C1", "ours-unfused": "C4"}


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def nan_safe(value, spec: str) -> str:
    return "–" if value is None or value != value else format(value, spec)


def masking(row: dict) -> str:
    share = row["masking_ms"] / row["step_ms"]
    return "–" if share != share else f"{row['masking_ms']:.1f} ({100 * share:.1f}%)"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| shape | B | L | variant | ms/step | × base | tokens/s | peak MB | × base | masking ms (% step) "
        "| encoder | decoder | MLM heads | BoW | optimizer |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['batch_size']} | {r['length']} | {r['variant']} | {r['step_ms']:.0f} "
            f"| {nan_safe(r.get('step_ratio'), '.2f')} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} "
            f"| {nan_safe(r.get('peak_ratio'), '.2f')} | {masking(r)} "
            f"| {nan_safe(r['encoder_ms'], '.0f')} | {nan_safe(r['decoder_ms'], '.0f')} "
            f"| {nan_safe(r['mlm_heads_ms'], '.0f')} | {nan_safe(r.get('bow_ms'), '.0f')} "
            f"| {nan_safe(r['optimizer_ms'], '.0f')} |"
        )
    return "\n".join(lines)


def panel_order(panel: tuple[str, int, str]) -> tuple:
    shape, batch_size, device = panel
    return (device, shape != "minilm", shape, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("train_step.png"))
    parser.add_argument("--table", action="store_true", help="print a Markdown table too")
    args = parser.parse_args()

    rows = load(args.results)
    if args.table:
        print(markdown_table(rows))
    panels = sorted({(row["shape"], row["batch_size"], row["device"]) for row in rows}, key=panel_order)
    columns = min(len(panels), 2)
    lines = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(5 * columns, 3.8 * lines), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, (shape, batch_size, device) in zip(axes.flat, panels, strict=False):
        series, seen = defaultdict(list), set()
        for row in rows:  # a point measured twice (several files): the first one is plotted
            point = (row["variant"], row["length"])
            if (row["shape"], row["batch_size"], row["device"]) == (
                shape,
                batch_size,
                device,
            ) and point not in seen:
                seen.add(point)
                series[row["variant"]].append((row["length"], row["step_ms"]))
        for variant, points in sorted(series.items()):
            points.sort()
            lengths, times = zip(*points, strict=True)
            axis.plot(
                lengths,
                [t / 1000 for t in times],
                STYLES.get(variant, "x-"),
                color=COLORS.get(variant),
                label=variant,
            )
        axis.set_ylim(bottom=0)
        axis.set_title(f"{shape}, batch {batch_size}, {device}")
        axis.set_xlabel("sequence length (tokens)")
        axis.set_ylabel("seconds / training step")
        axis.set_xticks(sorted({length for points in series.values() for length, _ in points}))
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
