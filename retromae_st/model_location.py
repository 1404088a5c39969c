"""Telling a local model folder from a Hugging Face hub id, with a clear error for a missing folder.

``"Shitao/RetroMAE"`` contains a path separator but is a hub id; ``"./model"``, ``"/models/x"``,
``"runs/a/final"`` or a file are local paths. A name that is neither an existing folder nor a plausible hub id
is refused up front ("model folder not found"); a plausible hub id goes to the hub loader, and if that fails
(offline, unknown repository, no access) the error says both that it is not a local folder and what the hub
loader answered.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

HUB_ID_FORM = "a Hugging Face hub id ('name' or 'namespace/name')"


def model_location(name_or_path: str) -> Literal["local", "hub"]:
    """``"local"`` for an existing folder, ``"hub"`` for a plausible hub id that is not one.

    Raises:
        FileNotFoundError: ``name_or_path`` is a file, or a local path that does not exist (it starts with
            ``.``, ``/`` or ``~``, its first component is a local folder, or it is not a valid hub id).
    """
    if os.path.isdir(name_or_path):
        return "local"
    if os.path.exists(name_or_path):
        raise FileNotFoundError(f"model folder not found: {name_or_path!r} is a file, not a folder")
    reason = local_path_reason(name_or_path)
    if reason:
        raise FileNotFoundError(f"model folder not found: {name_or_path!r} does not exist ({reason})")
    return "hub"


def local_path_reason(name: str) -> str | None:
    """Why ``name`` (which does not exist) must be meant as a local path; ``None`` if it can be a hub id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.startswith((".", "/", "\\", "~")):
        return "a relative or absolute path"
    namespace = name.split("/", 1)[0]
    if "/" in name and os.path.isdir(namespace):
        return f"{namespace!r} is a local folder"
    try:
        validate_repo_id(name)
    except HFValidationError:
        return f"and it is not {HUB_ID_FORM}"
    return None


@contextmanager
def naming_hub_failures(hub_id: str) -> Iterator[None]:
    """Re-raises a hub loader's ``OSError`` (offline, unknown id, no access) as one naming ``hub_id``."""
    try:
        yield
    except OSError as error:
        raise FileNotFoundError(
            f"model {hub_id!r} is not a local folder, and loading it as {HUB_ID_FORM} failed: {error}"
        ) from error
