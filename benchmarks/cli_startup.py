"""Start-up cost of ``retromae-st --help`` and ``retromae-st pretrain --help`` (issue #18).

    OMP_NUM_THREADS=1 python benchmarks/cli_startup.py [--repeats 5] [--root OTHER_CHECKOUT]

Each command runs in a fresh interpreter; the child's CPU time (user + sys, from ``os.wait4``) is the
median of ``--repeats`` runs, printed next to a bare ``python -c pass`` measured in the same run, and the
ratio. Also prints whether torch was imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import sys, contextlib, io\n"
    "from retromae_st.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    try:\n        main({argv!r})\n    except SystemExit:\n        pass\n"
    "print('torch' in sys.modules)\n"
)


def child_cpu_seconds(code: str, root: Path = ROOT) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    output = process.stdout.read().decode().strip()
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_utime + usage.ru_stime, output


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    parser.add_argument("--commands", nargs="+", default=["--help", "pretrain --help"])
    args = parser.parse_args()
    baseline = statistics.median(child_cpu_seconds("pass")[0] for _ in range(args.repeats))
    print(f"python -c pass: {baseline:.3f} CPU s (median of {args.repeats})")
    print(f"checkout: {args.root}")
    for argv in (command.split() for command in args.commands):
        runs = [child_cpu_seconds(PROBE.format(argv=argv), args.root) for _ in range(args.repeats)]
        seconds = statistics.median(cpu for cpu, _ in runs)
        print(
            f"retromae-st {' '.join(argv)}: {seconds:.3f} CPU s = {seconds / baseline:.1f}x python -c pass; "
            f"torch imported: {runs[0][1]}"
        )


if __name__ == "__main__":
    main()
