"""Child process of the SIGKILL test: trains a tiny model and hangs while writing one checkpoint.

Usage: python -m tests.distributed.kill_during_save MODEL_DIR OUTPUT_DIR MAX_STEPS SAVE_STEPS HANG_AT_STEP

At step HANG_AT_STEP the trainer has written the model, optimizer and trainer state, and the loss
state is half written (its temporary file exists); the child then touches OUTPUT_DIR/hanging and
sleeps until the parent kills it.
"""

import sys
import time
from pathlib import Path

from retromae_st import checkpointing
from tests.conftest import SAMPLE_CORPUS
from tests.test_training import make_trainer


def main() -> None:
    model_dir, output_dir, max_steps, save_steps, hang_at = sys.argv[1:6]
    output = Path(output_dir)
    real_save = checkpointing.atomic_save_file

    def slow_save(tensors, path):
        if f"checkpoint-{hang_at}" in path:
            with open(f"{path}.tmp-partial", "wb") as handle:
                handle.write(b"\x00" * 64)  # a truncated file, as a kill mid-write leaves
            (output / "hanging").touch()
            time.sleep(600)
        real_save(tensors, path)

    checkpointing.atomic_save_file = slow_save
    texts = [line.strip() for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    trainer, _, _ = make_trainer(model_dir, texts[:96], output, int(max_steps), save_steps=int(save_steps))
    trainer.train()


if __name__ == "__main__":
    main()
