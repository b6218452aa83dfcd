"""Checkpoint files: writing them atomically, reading them back safely and verified, and
turning a run directory's checkpoint into a policy.

A checkpoint file (format version 2) is ``torch.save`` of

    {"format": "iiwa-rl checkpoint", "version": 2, "sha256": <hex>, "state": {...}}

where `state` is what the trainer saved (config, algorithm, normalisers, counters) with
every numpy array stored as a tensor, and `sha256` is `content_sha256(state)`: a digest
of every value in it, tensors by their bytes. Reading one:

- `torch.load(weights_only=True)`: a checkpoint holds tensors and plain data, so one made
  to run code when unpickled is refused instead of run;
- the format and version are checked, then the digest: a flipped byte inside a tensor
  loads without complaint from torch, and only the digest tells it from the real thing;
- the content is checked for the keys the trainer, `eval` and `export` read.

Every failure is a `CheckpointError` naming the file and what is wrong with it.

Format version 1 (written before the digest existed: the bare state, numpy arrays
pickled as such) still loads, with numpy's array reconstruction allowed to the
unpickler and nothing to verify the bytes against.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iiwa_rl import run_dir as runs
from iiwa_rl.schema import ConfigError

FORMAT = "iiwa-rl checkpoint"
VERSION = 2
LEGACY_VERSION = 1  # the bare state, no digest
# What the trainer, `iiwa-rl eval` and `iiwa-rl export` read from a state.
REQUIRED_KEYS = {
    "config": dict,
    "algorithm": dict,
    "obs_normalizer": dict,
    "reward_scaler": dict,
    "global_step": int,
    "episodes_done": int,
    "wall_time": float,
    "observation_size": int,
    "action_size": int,
}
PARTIAL_MARKER = ".partial."  # <name>.pt.partial.<pid> while a write is under way


class CheckpointError(ConfigError):
    """A checkpoint cannot be used; the message names the file and says why. A
    ConfigError, so the command line prints it and exits with status 2."""


# ------------------------------------------------------------------------- digest
def content_sha256(state: Any) -> str:
    """SHA-256 of a state's every value: structure, keys, numbers and strings, and each
    tensor's dtype, shape and bytes. Independent of the device the tensors are on."""
    digest = hashlib.sha256()
    for chunk in _content_chunks(state):
        digest.update(chunk)
    return digest.hexdigest()


def _content_chunks(value: Any) -> Iterator[bytes]:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        yield f"T{tensor.dtype}{tuple(value.shape)}:".encode()
        # Viewed as bytes: works for every dtype, bfloat16 and bool included.
        yield tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    elif isinstance(value, dict):
        yield f"D{len(value)}:".encode()
        for key, item in value.items():
            yield from _content_chunks(key)
            yield from _content_chunks(item)
    elif isinstance(value, (list, tuple)):
        yield f"{'L' if isinstance(value, list) else 'U'}{len(value)}:".encode()
        for item in value:
            yield from _content_chunks(item)
    elif value is None or isinstance(value, (bool, int, float, str, bytes)):
        # repr is exact for floats and tells 1 from 1.0 and True.
        yield f"V{type(value).__name__}:{value!r};".encode()
    else:
        raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def _numpy_as_tensors(value: Any) -> Any:
    """The state with numpy arrays and scalars as tensors (what weights_only loads back);
    the code reading them takes either, through np.asarray."""
    if isinstance(value, (np.ndarray, np.generic)):
        return torch.from_numpy(np.array(value))
    if isinstance(value, dict):
        return {key: _numpy_as_tensors(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numpy_as_tensors(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_numpy_as_tensors(item) for item in value)
    return value


# ------------------------------------------------------------------------ writing
def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` atomically: a reader (or a resume after kill -9) sees the
    previous file or the new one, never half of one."""
    path = Path(path)
    state = _numpy_as_tensors(state)
    record = {"format": FORMAT, "version": VERSION, "sha256": content_sha256(state), "state": state}
    partial = path.with_name(f"{path.name}{PARTIAL_MARKER}{os.getpid()}")
    try:
        with partial.open("wb") as handle:
            torch.save(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # an error or Ctrl-C mid-write leaves nothing behind
        raise
    return path


def remove_stale_partials(directory: str | Path) -> list[Path]:
    """Delete the half-written checkpoints of writers that are gone (a kill -9 during a
    write leaves `<name>.pt.partial.<pid>`); a live process's file is left alone."""
    removed = []
    for partial in Path(directory).glob(f"*{PARTIAL_MARKER}*"):
        pid_text = partial.name.rsplit(".", 1)[-1]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _process_alive(int(pid_text)):
            continue
        partial.unlink(missing_ok=True)
        removed.append(partial)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# ------------------------------------------------------------------------ reading
def _legacy_numpy_globals() -> list:
    """What a format-1 file's numpy arrays need from the unpickler: array and scalar
    reconstruction, no code of the file's choosing."""
    core = getattr(np, "_core", None) or np.core
    numeric = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
    numeric += ["float16", "float32", "float64"]
    dtype_classes = {type(np.dtype(name)) for name in numeric}  # numpy >= 1.25: one per dtype
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype] + sorted(
        dtype_classes - {np.dtype}, key=str
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The verified state of the checkpoint at `path`, its tensors on `device`, with
    ``state["source"]`` set to the file's path (so later errors can name it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the checkpoint is empty (0 bytes): its write was cut off")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            record = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        if "Unsupported global" in text or "Can only build" in text:
            raise CheckpointError(
                f"{path}: refused: it holds Python objects beyond tensors and plain data, "
                "which loading could run as code; an iiwa-rl checkpoint never does "
                f"({_unpickler_reason(text).split('. Please')[0]})"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({size:,} bytes; truncated, or not a torch "
            f"file: {_unpickler_reason(text)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({size:,} bytes; truncated, or not a torch "
            f"file: {reason})"
        ) from None
    state = _unwrap(record, path)
    _check_content(state, path)
    state["source"] = str(path)
    return state


def _unpickler_reason(text: str) -> str:
    """torch's weights-only refusal is a paragraph of advice; its own reason is the text
    after "WeightsUnpickler error:"."""
    _, found, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if found else text).splitlines() if line.strip()]
    return lines[0] if lines else "unreadable"


def _unwrap(record: Any, path: Path) -> dict:
    """The state inside a checkpoint record, its version and digest checked."""
    if not isinstance(record, dict):
        raise CheckpointError(
            f"{path}: not an iiwa-rl checkpoint (it holds a {type(record).__name__})"
        )
    if record.get("format") == FORMAT:
        version = record.get("version")
        if version != VERSION:
            raise CheckpointError(
                f"{path}: checkpoint format version {version!r}; this iiwa-rl reads versions "
                f"{LEGACY_VERSION} and {VERSION} (a newer iiwa-rl wrote it?)"
            )
        state = record.get("state")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: the checkpoint holds no state")
        expected = record.get("sha256")
        try:
            found = content_sha256(state)
        except TypeError as error:
            raise CheckpointError(f"{path}: unexpected content: {error}") from None
        if found != expected:
            raise CheckpointError(
                f"{path}: corrupted: the content's SHA-256 is {found[:16]}..., the checkpoint "
                f"says {str(expected)[:16]}...; resume from or evaluate another checkpoint"
            )
        return state
    if record.get("version") == LEGACY_VERSION:
        return record  # format 1: the bare state, nothing to verify it against
    raise CheckpointError(
        f"{path}: not an iiwa-rl checkpoint (no format marker; keys: "
        f"{', '.join(map(str, list(record)[:8])) or 'none'})"
    )


def _check_content(state: dict, path: Path) -> None:
    for key, expected in REQUIRED_KEYS.items():
        if key not in state:
            raise CheckpointError(f"{path}: not a complete checkpoint: '{key}' is missing")
        value = state[key]
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
        if not ok or isinstance(value, bool):
            raise CheckpointError(
                f"{path}: '{key}' should be a {expected.__name__}, found {type(value).__name__}"
            )
    for key in ("observation_size", "action_size"):
        if state[key] < 1:
            raise CheckpointError(f"{path}: '{key}' is {state[key]}, expected >= 1")


# ------------------------------------------------------------------ run directories
def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu"):
    """(config, verified checkpoint state) of a run directory; `checkpoint` is best or
    last (best falls back to last in a run that never evaluated)."""
    run_dir = Path(run_dir)
    config = runs.read_run_config(run_dir)
    path = runs.checkpoint_path(run_dir, checkpoint)
    if not path.exists():
        fallback = runs.checkpoint_path(run_dir, "last")
        if checkpoint == "best" and fallback.exists():
            path = fallback
        else:
            raise CheckpointError(f"{path}: no such checkpoint")
    return config, load_checkpoint(path, device)


def restore(target, state: dict, source: str) -> None:
    """`target.load_state_dict(state)`, a mismatch (another network size, another
    algorithm's state) reported as the checkpoint's fault, by file."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        detail = "; ".join(lines[:3]) if lines else type(error).__name__
        raise CheckpointError(
            f"{source}: does not fit the run's config (different network sizes or "
            f"algorithm?): {detail}"
        ) from None


def build_policy(config, state: dict, device: str = "cpu"):
    """(actor module, observation normaliser) restored from a checkpoint."""
    from iiwa_rl.algos import ALGORITHMS
    from iiwa_rl.normalization import ObservationNormalizer

    source = state.get("source", "checkpoint")
    algorithm = ALGORITHMS[config.algorithm](
        config,
        state["observation_size"],
        state["action_size"],
        1,
        torch.device(device),
        config.seed,
    )
    restore(algorithm, state["algorithm"], source)
    normalizer = ObservationNormalizer(state["observation_size"], config.normalize.clip)
    restore(normalizer, state["obs_normalizer"], source)
    if np.shape(normalizer.stats.mean) != (state["observation_size"],):
        raise CheckpointError(
            f"{source}: the observation statistics have shape {np.shape(normalizer.stats.mean)}, "
            f"the policy takes {state['observation_size']} observations"
        )
    actor = algorithm.deterministic_actor().eval()
    return actor, normalizer
