"""Resumable training state, saved so that a killed worker loses at most one save period.

Each save is one file `state-<step>.pt` (adapter weights, optimizer, LR scheduler, random
generators, step) written under a temporary name of the writing process, fsynced, then
renamed: a crash during the write leaves only the temporary file, which is never read (nor
shared with another worker of the job, such as one left running by a trainer that died).
Loading takes the newest save that reads back whole and agrees with its name, so even a
damaged newest file falls back to the one before. The two newest saves are kept. Files are
read with `torch.load(weights_only=True)`: plain tensors and numbers, never code.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT = 1
KEEP = 2
PAUSE_BEFORE_COMMIT_VARIABLE = "SDSTACK_TRAINER_TEST_PAUSE_BEFORE_COMMIT_S"
"""Test hook (unset in production): seconds to wait between writing a save and committing
it, so that a fault test can kill the worker inside a save (tests/reliability)."""
_NAME = re.compile(r"^state-(\d{9})\.pt$")


def state_path(folder: Path, step: int) -> Path:
    return folder / f"state-{step:09d}.pt"


def save_state(folder: Path, step: int, payload: dict[str, Any]) -> Path:
    """Writes the state of `step` atomically and prunes older saves."""
    folder.mkdir(parents=True, exist_ok=True)
    final = state_path(folder, step)
    tmp = folder / f".{final.name}.{os.getpid()}.tmp"
    with tmp.open("wb") as handle:
        torch.save({**payload, "format": FORMAT, "step": step}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    _pause_before_commit()
    os.replace(tmp, final)
    _fsync_dir(folder)
    for old in saved_steps(folder)[KEEP:]:
        state_path(folder, old).unlink(missing_ok=True)
    return final


def _pause_before_commit() -> None:
    seconds = float(os.environ.get(PAUSE_BEFORE_COMMIT_VARIABLE) or 0)
    if seconds > 0:
        log.warning("test hook: pausing %.1f s before committing a saved state", seconds)
        time.sleep(seconds)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def saved_steps(folder: Path) -> list[int]:
    """Steps of the complete-looking saves, newest first (temporary files excluded)."""
    if not folder.is_dir():
        return []
    steps = [int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(steps, reverse=True)


def load_latest(folder: Path) -> dict[str, Any] | None:
    """The newest save that loads and matches its name, or None when there is none."""
    for step in saved_steps(folder):
        path = state_path(folder, step)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file may fail in many ways; try the one before
            log.warning("ignoring unreadable saved state %s: %s", path.name, exc)
            continue
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            log.warning("ignoring saved state %s: unknown format", path.name)
            continue
        if payload.get("step") != step:
            log.warning(
                "ignoring saved state %s: it records step %s", path.name, payload.get("step")
            )
            continue
        return payload
    return None
