"""Distributed training: 2-process torchrun (CPU, gloo) equals one process on the combined batch."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from retromae_st.checkpointing import mask_seed
from tests.conftest import run_in_own_session

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def run_ddp_equivalence(loss_name: str, model_dir, result_path) -> dict:
    """Runs ``tests/distributed/ddp_equivalence.py`` on 2 CPU ranks and returns its measurements."""
    return run_torchrun(
        "tests.distributed.ddp_equivalence", [loss_name, str(model_dir), str(result_path)], result_path
    )


def run_torchrun(module: str, arguments: list[str], result_path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    # --standalone: torchrun binds its own free rendezvous port (no pick-then-release race).
    command = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", module, *arguments]
    completed = run_in_own_session(command, env, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(result_path.read_text())


# dupmae: the chunked BoW max-pool's own backward under DDP (bucketed all-reduce of its gradients).
@pytest.mark.parametrize("loss_name", ["retromae", "dupmae"])
def test_two_rank_ddp_step_equals_one_process_on_combined_batch(loss_name, tiny_bert_dir, tmp_path):
    result = run_ddp_equivalence(loss_name, tiny_bert_dir, tmp_path / "result.json")
    assert result["ddp_loss"] == pytest.approx(result["single_loss"], abs=1e-5)
    assert result["grad_names_equal"]
    assert result["max_grad_diff"] < 1e-5
    # The loss's own parameters are outside DDP: without averaging them, ranks would diverge.
    assert result["max_unsynced_decoder_grad_diff"] > 1e-4
    first, second = result["rank_draws"]
    assert first != second, "both ranks drew the same masking random stream"


def test_mask_seed_differs_per_rank_and_is_reproducible():
    seeds = {mask_seed(42, rank) for rank in range(8)}
    assert len(seeds) == 8
    assert mask_seed(42, 3) == mask_seed(42, 3)
    assert mask_seed(42, 0) != mask_seed(43, 0)


@pytest.mark.slow  # ~30 s: a real 2-rank trainer run (the DDP equivalence above covers the maths in CI)
def test_trainer_under_torchrun_keeps_ranks_in_sync(tiny_bert_dir, tmp_path):
    result_path = tmp_path / "result.json"
    arguments = [str(tiny_bert_dir), str(tmp_path / "out"), str(result_path)]
    result = run_torchrun("tests.distributed.trainer_ranks_agree", arguments, result_path)
    assert result["world_size"] == 2
    assert result["model_wrappers"] == ["DistributedDataParallel"]
    assert result["model_params"] == 0.0
    assert result["loss_params"] == 0.0, "the loss's decoder/MLM head drifted apart between ranks"
