"""Checks that keep a training run out of dead ends, made before any training step.

- the output folder: a fresh run into a non-empty folder is refused (unless ``overwrite``), and the
  folder must be writable;
- resuming: the last *complete* checkpoint is chosen (partial ones are named and skipped), and the
  run's settings must equal those stored in it (unless ``force``);
- ``max_seq_length`` against the model's positions and the tokenizer's special tokens.

Used by :mod:`retromae_st.pretraining`; the messages name both the Python argument and the CLI flag.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable

from retromae_st.checkpointing import checkpoint_problem, list_checkpoints, load_run_settings

logger = logging.getLogger(__name__)

#: Model types whose position ids start after the padding index (RoBERTa layout).
_WRITE_CHECK_PREFIX = ".write-check-"
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet"}


def check_output_dir(output_dir: str, resume: bool, overwrite: bool, owned: Iterable[str]) -> None:
    """Refuses a fresh run into a non-empty ``output_dir`` unless ``overwrite``, which deletes the
    sub-folders a run writes (``owned``) and keeps anything else; then checks the folder is writable.

    Raises:
        FileExistsError: ``output_dir`` holds an earlier run and neither ``resume`` nor ``overwrite`` is set.
        PermissionError / OSError: the folder cannot be created or written.
    """
    if resume and overwrite:
        raise ValueError("resume (--resume/--resume-from) and overwrite (--overwrite) exclude each other")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise FileExistsError(f"output folder {output_dir} is a file")
    entries = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    entries = [name for name in entries if not name.startswith(_WRITE_CHECK_PREFIX)]  # another rank's check
    if entries and not resume:
        if not overwrite:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise FileExistsError(
                f"output folder {output_dir} is not empty ({shown}): pass --overwrite (overwrite=True) to "
                "replace the earlier run, or --resume (resume_from_checkpoint=True) to continue it"
            )
        for name in owned if int(os.environ.get("RANK", 0)) == 0 else ():  # torchrun: rank 0 deletes
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                logger.warning("overwrite: deleting %s of the earlier run", path)
                shutil.rmtree(path)
    check_writable(output_dir)


def check_writable(folder: str) -> None:
    """Creates ``folder`` if needed and writes (then deletes) a file in it; one-line error if that fails."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=_WRITE_CHECK_PREFIX):
            pass
    except OSError as error:
        raise type(error)(error.errno, f"output folder {folder} is not writable ({error.strerror})") from None


def choose_resume_checkpoint(checkpoints_dir: str, resume_from_checkpoint: bool | str | None) -> str | None:
    """The checkpoint to resume from: ``True`` = the newest complete one in ``checkpoints_dir``
    (saying which, and why newer ones were skipped), a path = that one (refused if incomplete),
    ``None``/``False`` = none.

    Raises:
        ValueError: the named checkpoint is incomplete, or every checkpoint present is.
        FileNotFoundError: the named checkpoint does not exist.
    """
    if not resume_from_checkpoint:
        return None
    if isinstance(resume_from_checkpoint, (str, os.PathLike)):
        path = os.fspath(resume_from_checkpoint)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"resume_from_checkpoint (--resume-from): no checkpoint folder {path}")
        problem = checkpoint_problem(path)
        if problem:
            raise ValueError(
                f"checkpoint {path} is incomplete ({problem}); resume with --resume "
                "(resume_from_checkpoint=True) to pick the last complete one"
            )
        return path
    checkpoints = list_checkpoints(checkpoints_dir)
    complete = [path for _, path, problem in checkpoints if problem is None]
    if not checkpoints:
        logger.warning("resume: no checkpoint in %s yet, starting from step 0", checkpoints_dir)
        return None
    if not complete:
        problems = "; ".join(f"{os.path.basename(path)}: {problem}" for _, path, problem in checkpoints)
        raise ValueError(
            f"resume: no complete checkpoint in {checkpoints_dir} ({problems}); start afresh with --overwrite"
        )
    chosen = complete[-1]
    for step, path, problem in checkpoints:
        if problem is not None and step > int(chosen.rsplit("-", 1)[1]):
            logger.warning("resume: skipping %s: %s", path, problem)
    logger.warning("resume: continuing from %s (the newest complete checkpoint)", chosen)
    return chosen


def _flatten(settings: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def settings_differences(saved: dict, current: dict) -> list[str]:
    """``"name: checkpoint X, now Y"`` for every setting that differs (nested keys joined by dots)."""
    saved_flat = _flatten(saved)
    current_flat = _flatten(json.loads(json.dumps(current, default=str)))
    missing = object()
    differences = []
    for name in sorted(set(saved_flat) | set(current_flat)):
        before, now = saved_flat.get(name, missing), current_flat.get(name, missing)
        if before != now:
            shown_before = "unset" if before is missing else repr(before)
            shown_now = "unset" if now is missing else repr(now)
            differences.append(f"{name}: checkpoint {shown_before}, now {shown_now}")
    return differences


def check_resume_settings(checkpoint: str, settings: dict, force: bool = False) -> None:
    """Refuses to resume ``checkpoint`` with settings other than those it was written with.

    Raises:
        ValueError: naming each difference, unless ``force`` (then they are logged).
    """
    saved = load_run_settings(checkpoint)
    if saved is None:
        logger.warning(
            "resume: %s stores no run settings (an older version wrote it): not checked", checkpoint
        )
        return
    differences = settings_differences(saved, settings)
    if not differences:
        return
    listed = "; ".join(differences)
    if not force:
        raise ValueError(
            f"resuming {checkpoint} with different settings: {listed}. Resume with the settings it was "
            "written with, or pass --force (force=True) to accept the differences"
        )
    logger.warning("resume with --force: %s", listed)


def model_positions(config) -> int | None:
    """The number of token positions the model can embed (``None`` when it has no such limit)."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    if getattr(config, "model_type", None) in _OFFSET_POSITION_MODELS:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


def check_max_seq_length(max_seq_length: object, config, tokenizer) -> None:
    """``max_seq_length`` must fit the model's positions and leave room for text after the special tokens.

    Raises:
        ValueError: naming ``max_seq_length`` (``--max-seq-length``), the limit and why.
    """
    name = "max_seq_length (--max-seq-length)"
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int):
        raise ValueError(f"{name} must be an int, got {max_seq_length!r}")
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    if max_seq_length <= specials:
        raise ValueError(
            f"{name} {max_seq_length} leaves no room for text: the tokenizer adds {specials} special "
            f"token(s) to every text; use at least {specials + 1} (the recipe's default is 256)"
        )
    positions = model_positions(config)
    if positions is not None and max_seq_length > positions:
        raise ValueError(
            f"{name} {max_seq_length} exceeds the model's {positions} token positions "
            f"(max_position_embeddings of its config); use at most {positions}"
        )
