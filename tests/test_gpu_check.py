"""``benchmarks/gpu_check.py`` runs end to end in its ``--small`` mode (on CPU here), so that the one GPU run
it exists for does not fail on the script itself."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_train_step_and_pooling_pieces(tmp_path):
    from benchmarks import gpu_check

    report = gpu_check.main(
        ["--small", "--only", "train_step", "pooling", "--json", str(tmp_path / "out.json")]
    )
    assert report["errors"] == {}
    assert json.loads((tmp_path / "out.json").read_text())["train_step"] == report["train_step"]
    rows = report["train_step"]
    assert sorted((row["variant"], row["length"]) for row in rows) == sorted(
        (variant, length) for variant in ("baseline", "ours", "dupmae") for length in (32, 64)
    )
    for row in rows:
        for key in ("step_ms", "tokens_per_s", "peak_mb", "masking_ms", "step_vs_baseline"):
            assert finite_positive(row[key]), (key, row)
        assert row["sdpa_kernel"]
    assert any("scaled_dot_product" in row["sdpa_kernel"] for row in rows if row["variant"] == "ours")
    assert finite_positive(report["pooling"]["dupmae_vs_cls"])
    assert set(report["goals"]) >= {"step <= 0.6x baseline", "DupMAE pooling <= 1.3x CLS encode"}


@pytest.mark.slow  # ~1 CPU-minute: every piece, the CUDA tests (skipped here) and a real trainer run
def test_whole_small_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    completed = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--small", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert report["cuda_tests"]["returncode"] in (0, 5)  # 5: every CUDA test skipped (no device)
    assert report["pretrain"]["steps_timed"] >= 1 and finite_positive(
        report["pretrain"]["padded_tokens_per_s"]
    )
    assert "pretrain tokens/s within 15% of the step benchmark" in report["goals"]
