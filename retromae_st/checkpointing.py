"""Saving and restoring a loss's own trainable weights with every trainer checkpoint.

The sentence-transformers trainer optimises a loss's parameters (our decoder and MLM head) but its
checkpoints hold only the model. :class:`LossStateCallback` writes each stateful loss's weights into
``checkpoint-N/loss_state/`` next to the model and restores them on ``resume_from_checkpoint``.
Losses deriving from :class:`TrainableLossMixin` attach the callback to the trainer that runs them on
their first training step (found on the call stack, as the ``self`` of ``compute_loss``), so
``SentenceTransformerTrainer`` and ``model.fit`` need no extra setup. A custom loop that calls the loss
outside a Trainer saves and loads the state itself with ``save_training_state``/``load_training_state``.

Interruption safety: the Hugging Face Trainer (v5) writes a checkpoint in place (no temporary folder,
no rename) and calls ``on_save`` only after the model, optimizer, scheduler, RNG and trainer state are
written. The loss state is therefore written last, each file atomically (temporary file, fsync,
``os.replace``), followed by a ``loss_state/complete.json`` marker. A checkpoint without that marker was
cut off mid-save: :func:`last_complete_checkpoint` skips it and resuming from it is refused with an
error naming it (``transformers.trainer_utils.get_last_checkpoint``, which ``resume_from_checkpoint=True``
uses, would pick it).

Masking randomness: each loss draws its masks from its own ``torch.Generator`` seeded from
``(torch.initial_seed(), rank)`` (the trainer seeds every rank alike with ``args.seed``), so ranks mask
differently yet reproducibly; the generator state is checkpointed with the loss state for exact resume.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys

import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from retromae_st.model_card import record_loss_terms

#: Distributed backends whose trainer clipping we leave alone (they shard or own the gradients).
_OWN_CLIPPING = {
    DistributedType.DEEPSPEED,
    DistributedType.FSDP,
    DistributedType.XLA,
    DistributedType.MEGATRON_LM,
}

logger = logging.getLogger(__name__)

LOSS_STATE_DIR = "loss_state"
COMPLETE_MARKER = "complete.json"
RUN_SETTINGS_FILE = "run_settings.json"
#: Weight files a trainer checkpoint holds its model in (one of them, possibly sharded).
MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
GENERATOR_STATE_KEY = "__mask_generator_state__"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def mask_seed(base_seed: int, rank: int) -> int:
    """The seed of one rank's masking generator: distinct per rank, fixed by ``base_seed``."""
    return (base_seed * 1_000_003 + rank * 7_919 + 1) % (2**63 - 1)


def current_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str) -> None:
    """``safetensors`` save that never leaves a truncated file at ``path``: write aside, then rename."""
    temporary = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _atomic_write_text(text: str, path: str) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def checkpoint_problem(checkpoint: str) -> str | None:
    """What is missing from ``checkpoint`` for a safe resume, or ``None`` when its save finished.

    The trainer writes the model first and ``trainer_state.json`` last; :class:`LossStateCallback`
    then adds the loss state and, last of all, ``loss_state/complete.json``.
    """
    if not any(_has_model_weights(os.path.join(checkpoint, name)) for name in MODEL_WEIGHT_FILES):
        return "no model weights (model.safetensors): cut off while saving the model"
    if not os.path.isfile(os.path.join(checkpoint, "trainer_state.json")):
        return "no trainer_state.json: cut off before the trainer finished saving"
    if not os.path.isfile(os.path.join(checkpoint, LOSS_STATE_DIR, COMPLETE_MARKER)):
        return f"no {LOSS_STATE_DIR}/{COMPLETE_MARKER}: cut off before the loss state was saved"
    return None


def _has_model_weights(path: str) -> bool:
    if os.path.isfile(path):
        return True
    # A sentence-transformers checkpoint keeps the Transformer's weights in the root or a module folder.
    folder, name = os.path.split(path)
    return any(
        os.path.isfile(os.path.join(folder, sub, name))
        for sub in (os.listdir(folder) if os.path.isdir(folder) else [])
        if os.path.isdir(os.path.join(folder, sub)) and sub != LOSS_STATE_DIR
    )


def is_complete_checkpoint(checkpoint: str) -> bool:
    """Whether the trainer and :class:`LossStateCallback` both finished writing ``checkpoint``."""
    return checkpoint_problem(checkpoint) is None


def list_checkpoints(output_dir: str) -> list[tuple[int, str, str | None]]:
    """``(step, path, problem)`` of every ``checkpoint-N`` in ``output_dir``, oldest first
    (``problem`` as :func:`checkpoint_problem`)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_NAME.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path, checkpoint_problem(path)))
    return sorted(found)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` whose save finished; partial ones are skipped.

    Pass it as ``trainer.train(resume_from_checkpoint=last_complete_checkpoint(args.output_dir))``
    after an interruption.
    """
    complete = None
    for _, path, problem in list_checkpoints(output_dir):
        if problem is None:
            complete = path
        else:
            logger.warning("Skipping incomplete checkpoint %s: %s", path, problem)
    return complete


def save_run_settings(checkpoint: str, settings: dict) -> None:
    """Writes the run's settings next to the loss state (``loss_state/run_settings.json``), atomically."""
    os.makedirs(os.path.join(checkpoint, LOSS_STATE_DIR), exist_ok=True)
    text = json.dumps(settings, indent=2, sort_keys=True)
    _atomic_write_text(text, os.path.join(checkpoint, LOSS_STATE_DIR, RUN_SETTINGS_FILE))


def load_run_settings(checkpoint: str) -> dict | None:
    """The settings :func:`save_run_settings` stored in ``checkpoint``, or ``None`` (older checkpoints)."""
    path = os.path.join(checkpoint, LOSS_STATE_DIR, RUN_SETTINGS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


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

    def mask_generator(self, device: torch.device) -> torch.Generator:
        """This loss's masking random stream on ``device``: seeded per rank on first use, resumable."""
        generator = getattr(self, "_mask_generator", None)
        if generator is None or generator.device != torch.device(device):
            generator = torch.Generator(device=device)
            pending = getattr(self, "_pending_generator_state", None)
            if pending is not None:
                generator.set_state(pending)
                self._pending_generator_state = None
            else:
                generator.manual_seed(mask_seed(torch.initial_seed(), current_rank()))
            self._mask_generator = generator
        return generator

    def _generator_state(self) -> torch.Tensor | None:
        generator = getattr(self, "_mask_generator", None)
        if generator is not None:
            return generator.get_state()
        return getattr(self, "_pending_generator_state", None)

    def save_training_state(self, directory: str, name: str = "loss") -> str:
        """Writes the loss's own weights (and masking RNG state) to ``directory/loss_state/<name>.safetensors``."""
        path = os.path.join(directory, LOSS_STATE_DIR, f"{name}.safetensors")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tensors = {key: tensor.cpu().contiguous() for key, tensor in self.training_state_dict().items()}
        generator_state = self._generator_state()
        if generator_state is not None:
            tensors[GENERATOR_STATE_KEY] = generator_state.cpu()
        atomic_save_file(tensors, path)
        return path

    def load_training_state(self, directory: str, name: str = "loss") -> None:
        """Restores the weights written by :meth:`save_training_state`."""
        path = os.path.join(directory, LOSS_STATE_DIR, f"{name}.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No {type(self).__name__} state at {path}: this checkpoint was not written while training "
                "with this loss, so its decoder/MLM head cannot be restored."
            )
        state = load_file(path)
        generator_state = state.pop(GENERATOR_STATE_KEY, None)
        self.load_training_state_dict(state)
        if generator_state is not None:
            self._mask_generator = None
            self._pending_generator_state = generator_state

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


def own_parameters(loss: TrainableLossMixin) -> list[nn.Parameter]:
    """The loss's trainable parameters that are not its model's (tied ones belong to the model)."""
    model_params = {id(p) for p in unwrap_model(loss.model).parameters()}
    return [p for p in loss.parameters() if p.requires_grad and id(p) not in model_params]


def sync_loss_gradients(loss: TrainableLossMixin) -> None:
    """Averages the gradients of the loss's own parameters over all ranks, as DDP does for the model's.

    The sentence-transformers trainer wraps only the model in ``DistributedDataParallel``; without this
    every rank would update its own decoder/MLM head from its own shard, and the ranks would drift apart.
    Parameters tied to the model (synchronised by DDP already) are skipped.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    params = own_parameters(loss)
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for param in params:
        size = param.numel()
        param.grad = flat[offset : offset + size].view_as(param).clone()
        offset += size


def unwrap_model(model: nn.Module) -> nn.Module:
    """The SentenceTransformer inside DDP / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


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
    """Saves every stateful loss of ``trainer`` into each checkpoint and restores it on resume.

    ``run_settings`` (a JSON-able dict, e.g. what :func:`retromae_st.pretraining.pretrain` ran with) is
    written into every checkpoint too (:func:`save_run_settings`), so that a resume can check them.

    It also makes the trainer treat the loss's own parameters like the model's at the optimizer step:
    their gradients are averaged over ranks (DDP wraps only the model) and ``max_grad_norm`` clips the
    model's and the loss's gradients *together*, by their joint norm, as the authors' Trainer did with
    encoder and decoder in one module (the sentence-transformers trainer clips ``model.parameters()``
    only). Under DeepSpeed, FSDP, XLA or Megatron the trainer's own clipping is left as it is. Each logged
    loss term also goes into the model card's training-log table (:func:`retromae_st.model_card.record_loss_terms`).
    """

    def __init__(self, trainer: Trainer, run_settings: dict | None = None) -> None:
        self.trainer = trainer
        self.run_settings = run_settings
        self._restored_step: int | None = None
        self._gradients_synced = False
        if trainer.accelerator.distributed_type not in _OWN_CLIPPING:
            self._clip_model_only = trainer._clip_grad_norm
            trainer._clip_grad_norm = self.clip_model_and_loss

    def clip_model_and_loss(self, model: nn.Module):
        """The trainer's ``_clip_grad_norm``, over the model's and the losses' parameters together."""
        self.sync_gradients()
        extra = [p for loss in stateful_losses(self.trainer.loss).values() for p in own_parameters(loss)]
        if not extra or self.trainer._has_mixed_mesh_grads(model):
            return self._clip_model_only(model)
        parameters = itertools.chain(model.parameters(), extra)
        return self.trainer.accelerator.clip_grad_norm_(parameters, self.trainer.args.max_grad_norm)

    def sync_gradients(self) -> None:
        if not self._gradients_synced:
            for loss in stateful_losses(self.trainer.loss).values():
                sync_loss_gradients(loss)
            self._gradients_synced = True

    def on_train_begin(self, args, state, control, **kwargs):
        self.restore_if_resuming(args, state)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.sync_gradients()  # when clipping is off
        self._gradients_synced = False

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if model is not None and logs:
            record_loss_terms(model.model_card_data, state.global_step, logs)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(checkpoint):
            logger.warning("Checkpoint folder %s not found: loss state not saved", checkpoint)
            return
        losses = stateful_losses(self.trainer.loss)
        for name, loss in losses.items():
            loss.save_training_state(checkpoint, name)
        if self.run_settings is not None:
            save_run_settings(checkpoint, self.run_settings)
        # Written last: its presence certifies the whole checkpoint (see the module docstring).
        marker = {"global_step": state.global_step, "losses": sorted(losses)}
        _atomic_write_text(json.dumps(marker), os.path.join(checkpoint, LOSS_STATE_DIR, COMPLETE_MARKER))

    def restore_if_resuming(self, args, state) -> None:
        if state.global_step == 0 or self._restored_step == state.global_step:
            return
        checkpoint = _resume_path_on_stack() or os.path.join(
            args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        )
        if not is_complete_checkpoint(checkpoint):
            raise ValueError(
                f"Checkpoint {checkpoint} is incomplete: the run was interrupted while saving it, so its "
                f"weights or optimizer state may be partial. Resume from the last complete one instead: "
                f"resume_from_checkpoint={last_complete_checkpoint(os.path.dirname(checkpoint))!r} "
                "(retromae_st.last_complete_checkpoint(output_dir))."
            )
        for name, loss in stateful_losses(self.trainer.loss).items():
            loss.load_training_state(checkpoint, name)
            logger.info("Restored %s state from %s", type(loss).__name__, checkpoint)
        self._restored_step = state.global_step
