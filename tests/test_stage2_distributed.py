"""gather_across_devices: two torchrun processes (gloo, CPU) match one process on the whole batch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from retromae_st import load_cls_model

SCRIPT = Path(__file__).parent / "distributed" / "gather_check.py"
sys.path.insert(0, str(SCRIPT.parent))
from gather_check import batch_texts, contrastive_loss_and_grads  # noqa: E402

from tests.conftest import run_in_own_session  # noqa: E402

ROWS_PER_RANK = 4


def test_two_process_gather_matches_one_process_on_concatenated_batch(tiny_bert_dir, tmp_path):
    output = tmp_path / "distributed.pt"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(SCRIPT.parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = run_in_own_session(
        [*command, str(SCRIPT), str(tiny_bert_dir), str(output), str(ROWS_PER_RANK)], env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    distributed = torch.load(output)

    torch.manual_seed(0)
    model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    model.eval()
    loss, grads = contrastive_loss_and_grads(model, batch_texts(2 * ROWS_PER_RANK), gather=False)

    assert torch.allclose(distributed["loss"], loss, atol=1e-5), (distributed["loss"], loss)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(distributed["grads"][name], grad, atol=1e-6, rtol=1e-4), name


def test_one_process_without_gather_differs(tiny_bert_dir):
    """The comparison above can fail: each half alone (no gathered negatives) gives another loss."""
    torch.manual_seed(0)
    model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    model.eval()
    columns = batch_texts(2 * ROWS_PER_RANK)
    whole, _ = contrastive_loss_and_grads(model, columns, gather=False)
    halves = [
        contrastive_loss_and_grads(
            model, [c[i * ROWS_PER_RANK : (i + 1) * ROWS_PER_RANK] for c in columns], False
        )[0]
        for i in range(2)
    ]
    assert not torch.allclose(torch.stack(halves).mean(), whole, atol=1e-3)
