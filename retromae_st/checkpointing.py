"""Saving and restoring a loss's own trainable weights with every trainer checkpoint.

The sentence-transformers trainer optimises a loss's parameters (our decoder and MLM head) but its
checkpoints hold only the model. :class:`LossStateCallback` writes each stateful loss's weights into
``checkpoint-N/loss_state/`` next to the model and restores them on ``resume_from_checkpoint``.
Losses deriving from :class:`TrainableLossMixin` attach the callback to the trainer that runs them on
their first training step (found on the call stack, as the ``self`` of ``compute_loss``), so
``SentenceTransformerTrainer`` and ``model.fit`` need no extra setup. A custom loop that calls the loss
outside a Trainer saves and loads the state itself with ``save_training_state``/``load_training_state``.
"""

from __future__ import annotations

import logging
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

LOSS_STATE_DIR = "loss_state"


class TrainableLossMixin:
    """For losses owning parameters besides ``self.model``: checkpoint those parameters.

    The state is every tensor of ``self.state_dict()`` that is not part of the model (tied tensors,
    such as an MLM head's projection shared with the word embeddings, belong to the model), each
    shared tensor kept once.
    """

    def training_state_dict(self) -> dict[str, torch.Tensor]:
        seen = {tensor.data_ptr() for tensor in self.model.state_dict().values()}
        state = {}
        for key, tensor in self.state_dict().items():
            # Skip the model and any second name of an already kept (tied) tensor.
            if key.startswith("model.") or tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            state[key] = tensor.detach()
        return state

    def load_training_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.training_state_dict()
        if set(state) != set(expected):
            raise ValueError(
                f"The saved {type(self).__name__} state does not fit this loss: "
                f"missing {sorted(set(expected) - set(state))}, unexpected {sorted(set(state) - set(expected))}"
            )
        with torch.no_grad():
            current = self.state_dict()
            for key, tensor in state.items():
                current[key].copy_(tensor)

    def save_training_state(self, directory: str, name: str = "loss") -> str:
        """Writes the loss's own weights to ``directory/loss_state/<name>.safetensors``."""
        path = os.path.join(directory, LOSS_STATE_DIR, f"{name}.safetensors")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file({key: tensor.cpu() for key, tensor in self.training_state_dict().items()}, path)
        return path

    def load_training_state(self, directory: str, name: str = "loss") -> None:
        """Restores the weights written by :meth:`save_training_state`."""
        path = os.path.join(directory, LOSS_STATE_DIR, f"{name}.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No {type(self).__name__} state at {path}: this checkpoint was not written while training "
                "with this loss, so its decoder/MLM head cannot be restored."
            )
        self.load_training_state_dict(load_file(path))

    def _attach_to_running_trainer(self) -> None:
        """Lets the trainer running this training step checkpoint the loss's weights (once per trainer)."""
        trainer = _running_trainer()
        if trainer is None or trainer is getattr(self, "_attached_trainer", None):
            return
        self._attached_trainer = trainer
        callback = next(
            (cb for cb in trainer.callback_handler.callbacks if isinstance(cb, LossStateCallback)), None
        )
        if callback is None:
            callback = LossStateCallback(trainer)
            trainer.add_callback(callback)
            # The trainer already resumed (if it did) before this first step: restore now.
            callback.restore_if_resuming(trainer.args, trainer.state)


def stateful_losses(loss: nn.Module | dict[str, nn.Module]) -> dict[str, TrainableLossMixin]:
    """The losses among a trainer's ``loss`` (one module or a dict per dataset) that own weights."""
    losses = loss if isinstance(loss, dict) else {"loss": loss}
    return {name: module for name, module in losses.items() if isinstance(module, TrainableLossMixin)}


def _caller_frames():
    frame = sys._getframe(1)
    while frame is not None:
        yield frame
        frame = frame.f_back


def _running_trainer() -> Trainer | None:
    """The Trainer whose ``compute_loss`` is calling us, found on the call stack."""
    for frame in _caller_frames():
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
    return None


def _resume_path_on_stack() -> str | None:
    """The ``resume_from_checkpoint`` the trainer's inner loop was called with, if any."""
    for frame in _caller_frames():
        if frame.f_code.co_name == "_inner_training_loop":
            path = frame.f_locals.get("resume_from_checkpoint")
            if isinstance(path, str):
                return path
    return None


class LossStateCallback(TrainerCallback):
    """Saves every stateful loss of ``trainer`` into each checkpoint and restores it on resume."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._restored_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.restore_if_resuming(args, state)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(checkpoint):
            logger.warning("Checkpoint folder %s not found: loss state not saved", checkpoint)
            return
        for name, loss in stateful_losses(self.trainer.loss).items():
            loss.save_training_state(checkpoint, name)

    def restore_if_resuming(self, args, state) -> None:
        if state.global_step == 0 or self._restored_step == state.global_step:
            return
        checkpoint = _resume_path_on_stack() or os.path.join(
            args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        )
        for name, loss in stateful_losses(self.trainer.loss).items():
            loss.load_training_state(checkpoint, name)
            logger.info("Restored %s state from %s", type(loss).__name__, checkpoint)
        self._restored_step = state.global_step
