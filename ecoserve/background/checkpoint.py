"""Checkpoint files of background jobs: written atomically, checked when read.

A checkpoint is what makes every exit lossless, so writing one must never destroy the last
good one: the bytes go to a temporary file in the same folder, are flushed to disk, and are
renamed over the old file, and then the folder is flushed so the rename survives a power cut.
A SIGKILL at any instant leaves either the old checkpoint or the new one.

The file is a magic line, one JSON header line (format version, job name, step count, last
metric, the payload's length and SHA-256) and the payload: the job's state_dict as
``torch.save`` writes it. Reading checks each in turn, so a truncated, corrupt, foreign or
newer-format file is refused with a message saying which, and loads with
``weights_only=True``, so a checkpoint can never run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from devices import durable

MAGIC = b"ECOSERVE-BACKGROUND-CHECKPOINT\n"
FORMAT_VERSION = 1
#: Largest header line read; a header holds a name, a few numbers and a metric dict.
MAX_HEADER_BYTES = 64 * 1024
#: Temporary files are named ``.<name>.tmp-XXXX`` beside the checkpoint.
TEMP_INFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    """A job's state after ``step`` steps, with the figures the runner reports."""

    job: str
    step: int
    state: Mapping[str, Any]
    metric: Mapping[str, float] = field(default_factory=dict)
    items: int = 0
    done: bool = False


def write_bytes_durably(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path``: temporary file, fsync, rename, fsync of the folder (its
    temporary named so ``remove_stale_temporaries`` finds it after a crash)."""
    durable.write_bytes_durably(path, data, TEMP_INFIX)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files a killed writer left beside ``path``; returns what went."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    gone = []
    for stale in path.parent.glob(f".{path.name}{TEMP_INFIX}*"):
        stale.unlink(missing_ok=True)
        gone.append(stale)
    return gone


def encode_checkpoint(ckpt: Checkpoint) -> bytes:
    """The file's bytes; ValueError if the state holds something a checkpoint cannot."""
    buf = io.BytesIO()
    try:
        torch.save(dict(ckpt.state), buf)
    except Exception as exc:  # pickling raises several types for an unsavable object
        raise ValueError(f"job {ckpt.job!r}'s state_dict cannot be saved: {exc}") from exc
    payload = buf.getvalue()
    header = {
        "version": FORMAT_VERSION,
        "job": ckpt.job,
        "step": ckpt.step,
        "items": ckpt.items,
        "done": ckpt.done,
        "metric": {k: float(v) for k, v in ckpt.metric.items() if math.isfinite(float(v))},
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (see the module docstring)."""
    write_bytes_durably(path, encode_checkpoint(ckpt))


def _header(data: bytes, path: Path) -> tuple[dict[str, Any], bytes]:
    if not data.startswith(MAGIC):
        raise CheckpointError(
            f"{path} is not an ecoserve background-job checkpoint (it does not start with "
            f"{MAGIC.strip().decode()})"
        )
    rest = data[len(MAGIC) :]
    end = rest.find(b"\n", 0, MAX_HEADER_BYTES)
    if end < 0:
        raise CheckpointError(f"{path} is truncated or corrupt: its header line never ends")
    try:
        header = json.loads(rest[:end])
    except ValueError as exc:
        raise CheckpointError(f"{path} is corrupt: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is corrupt: its header is not a JSON object")
    return header, rest[end + 1 :]


def load_checkpoint(path: str | os.PathLike[str], job: str | None = None) -> Checkpoint:
    """The checkpoint at ``path``, checked; CheckpointError says what is wrong with it.

    ``job``: the name the checkpoint must carry (one written by another job is refused).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    header, payload = _header(data, path)
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this ecoserve reads "
            f"version {FORMAT_VERSION} (it was written by another ecoserve version)"
        )
    try:
        name = str(header["job"])
        step = int(header["step"])
        items = int(header.get("items", 0))
        done = bool(header.get("done", False))
        metric = {str(k): float(v) for k, v in dict(header.get("metric", {})).items()}
        length = int(header["payload_bytes"])
        digest = str(header["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt: its header lacks or garbles {exc}") from None
    if job is not None and name != job:
        raise CheckpointError(
            f"{path} is a checkpoint of job {name!r}, not of {job!r}; give this job its own "
            "--state-dir or remove the file"
        )
    if len(payload) != length:
        raise CheckpointError(
            f"{path} is truncated or corrupt: {len(payload)} payload bytes, header says {length}"
        )
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises several types
        raise CheckpointError(f"{path} holds a state that cannot be loaded safely: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return Checkpoint(job=name, step=step, state=state, metric=metric, items=items, done=done)


def set_aside(path: str | os.PathLike[str]) -> Path:
    """Rename an unusable checkpoint out of the way (``NAME.rejected``, ``NAME.rejected-2``...)
    so a fresh start never overwrites what an operator may want to look at."""
    path = Path(path)
    target = path.with_name(f"{path.name}.rejected")
    n = 2
    while target.exists():
        target = path.with_name(f"{path.name}.rejected-{n}")
        n += 1
    os.replace(path, target)
    return target
