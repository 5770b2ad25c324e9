"""Per-behavior checkpoints, written atomically, in a plain numpy format.

Why: ``--resume`` must continue exactly where a run stopped, and a crash (or a kill)
in the middle of writing must never leave a corrupt latest checkpoint. Every file is
written to a temporary name in the same folder, flushed and fsynced, then moved over
the final name with ``os.replace`` (atomic on POSIX and Windows), and the folder is
fsynced so the rename itself survives a power cut.

Layout (as ML-Agents users know it, with ``.npz`` instead of ``.pt``):
``<run>/<Behavior>/<Behavior>-<step>.npz`` every ``checkpoint_interval`` steps, the
``keep_checkpoints`` most recent kept, and ``<run>/<Behavior>/checkpoint.npz``, the
latest, which ``--resume`` loads.

File format: a numpy ``.npz`` archive (readable with ``np.load(..., allow_pickle=False)``)
holding one entry per array leaf of the learner's ``state_dict()`` and a JSON entry
``__tree__`` that describes the nesting (dicts, lists, tuples, named tuples, Python
scalars, None). Nothing is pickled.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common.logging import get_logger

CHECKPOINT_EXTENSION = "npz"
LATEST_NAME = f"checkpoint.{CHECKPOINT_EXTENSION}"
FORMAT = "tandem-checkpoint/1"

_log = get_logger("trainer_server.checkpoints")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (missing, truncated, or not a Tandem checkpoint)."""


class NonFiniteStateError(ValueError):
    """A state with NaN or infinite values: never written (the previous checkpoint stays)."""


def non_finite_entries(state: Any, path: str = "") -> list[str]:
    """The paths (``params/actor/w0``) of the floating-point values of ``state`` holding NaN or inf."""
    if isinstance(state, dict):
        return [e for k, v in state.items() for e in non_finite_entries(v, f"{path}/{k}" if path else str(k))]
    if isinstance(state, (list, tuple)):
        return [e for i, v in enumerate(state) for e in non_finite_entries(v, f"{path}/{i}" if path else str(i))]
    if isinstance(state, (bool, int, str)) or state is None:
        return []
    if isinstance(state, float) or isinstance(state, (np.ndarray, np.generic)) or hasattr(state, "__array__"):
        array = np.asarray(state)
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            return [path or "state"]
    return []


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, replace: Callable[[str, str], None] = os.replace) -> None:
    """Writes ``data`` to ``path`` so that readers see either the old or the new file, whole.

    Args:
        path: the final file name.
        data: the full contents.
        replace: the rename step (``os.replace``); tests substitute it to simulate a
            crash between the temporary write and the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace(str(tmp), str(path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: Path) -> int:
    """Deletes temporaries a crashed writer left behind; returns how many."""
    count = 0
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            count += 1
    return count


# --------------------------------------------------------------------------- (de)serialization


def _encode(tree: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if isinstance(tree, dict):
        for k in tree:
            if not isinstance(k, str):
                raise TypeError(f"{path or 'state'}: dict keys must be strings, got {k!r}")
        return {"d": {k: _encode(v, arrays, f"{path}/{k}") for k, v in tree.items()}}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        cls = type(tree)
        return {
            "nt": f"{cls.__module__}:{cls.__qualname__}",
            "v": [_encode(v, arrays, f"{path}/{i}") for i, v in enumerate(tree)],
        }
    if isinstance(tree, (list, tuple)):
        return {"l" if isinstance(tree, list) else "t": [_encode(v, arrays, f"{path}/{i}") for i, v in enumerate(tree)]}
    if tree is None or isinstance(tree, (bool, str)):
        return {"s": tree}
    if isinstance(tree, int):
        return {"i": str(tree)}  # as a string: JSON loses integers above 2**53
    if isinstance(tree, float):
        return {"f": repr(tree)}
    if isinstance(tree, (np.ndarray, np.generic)) or hasattr(tree, "__array__"):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(tree)
        return {"a": key}
    raise TypeError(f"{path or 'state'}: cannot store a {type(tree).__name__} in a checkpoint")


def _decode(node: Any, arrays: Any) -> Any:
    if "nt" in node:
        kind, value = "nt", node["v"]
    else:
        (kind, value), = node.items()
    if kind == "d":
        return {k: _decode(v, arrays) for k, v in value.items()}
    if kind == "l":
        return [_decode(v, arrays) for v in value]
    if kind == "t":
        return tuple(_decode(v, arrays) for v in value)
    if kind == "nt":
        module, _, qualname = node["nt"].partition(":")
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")):
            raise CheckpointError(f"{node['nt']} is not a named tuple")
        return obj(*(_decode(v, arrays) for v in value))
    if kind == "s":
        return value
    if kind == "i":
        return int(value)
    if kind == "f":
        return float(value)
    if kind == "a":
        return np.array(arrays[value])
    raise CheckpointError(f"unknown entry kind {kind!r}")


def dumps(state: Any, metadata: dict[str, Any]) -> bytes:
    """Serializes a learner state (nested containers of numpy arrays) and JSON metadata."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(state, arrays, "")
    header = {"format": FORMAT, "metadata": metadata, "tree": tree}
    buf = io.BytesIO()
    np.savez(buf, __tree__=np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8), **arrays)
    return buf.getvalue()


def loads(data: bytes, *, source: str = "checkpoint") -> tuple[Any, dict[str, Any]]:
    """Inverse of ``dumps``: returns ``(state, metadata)``.

    Raises:
        CheckpointError: naming ``source`` when the bytes are not a whole Tandem checkpoint.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            header = json.loads(bytes(archive["__tree__"]).decode("utf-8"))
            if header.get("format") != FORMAT:
                raise CheckpointError(f"{source}: not a Tandem checkpoint (format {header.get('format')!r})")
            return _decode(header["tree"], archive), header.get("metadata", {})
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as e:
        raise CheckpointError(f"{source}: unreadable checkpoint ({e})") from e


def save_file(path: Path, state: Any, metadata: dict[str, Any]) -> None:
    atomic_write_bytes(path, dumps(state, metadata))


def load_file(path: Path) -> tuple[Any, dict[str, Any]]:
    """Reads a checkpoint file; a folder means its ``checkpoint.npz``.

    Raises:
        CheckpointError: when the file is missing or unreadable.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LATEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return loads(path.read_bytes(), source=str(path))


# --------------------------------------------------------------------------- per-behavior manager


@dataclass(frozen=True)
class SavedCheckpoint:
    steps: int
    file_path: Path
    creation_time: float


class CheckpointManager:
    """Writes one behavior's checkpoints and keeps the most recent ``keep`` of them.

    Args:
        folder: ``<run>/<Behavior>``.
        file_stem: the behavior's folder-safe name (``3DBall``), used in file names.
        keep: ``keep_checkpoints`` (at least 1).
        adopt_existing: whether the step files already in ``folder`` belong to this run
            (``--resume``) and are pruned with its own. A run started over with ``--force``
            passes False: the previous run's checkpoints stay, as ML-Agents keeps them
            (it prunes only the checkpoints it recorded).
    """

    def __init__(self, folder: Path, file_stem: str, keep: int, adopt_existing: bool = True) -> None:
        self.folder = Path(folder)
        self.file_stem = file_stem
        self.keep = max(int(keep), 1)
        self.folder.mkdir(parents=True, exist_ok=True)
        #: steps of an earlier run's files, never pruned (unless this run writes the same step)
        self._foreign: set[int] = set() if adopt_existing else set(self.existing_steps())
        removed = remove_stale_temporaries(self.folder)
        if removed:
            _log.warning("removed temporaries of an interrupted checkpoint write", folder=str(self.folder), count=removed)

    @property
    def latest_path(self) -> Path:
        return self.folder / LATEST_NAME

    def step_path(self, step: int) -> Path:
        return self.folder / f"{self.file_stem}-{step}.{CHECKPOINT_EXTENSION}"

    def existing_steps(self) -> list[int]:
        """Steps of the ``<stem>-<step>.npz`` files on disk, ascending."""
        pattern = re.compile(rf"^{re.escape(self.file_stem)}-(\d+)\.{CHECKPOINT_EXTENSION}$")
        steps = []
        for p in self.folder.iterdir():
            m = pattern.match(p.name)
            if m:
                steps.append(int(m.group(1)))
        return sorted(steps)

    def save(self, step: int, state: Any, metadata: dict[str, Any], creation_time: float) -> tuple[SavedCheckpoint, list[int]]:
        """Writes ``<stem>-<step>.npz`` then ``checkpoint.npz``, then prunes old step files.

        Returns:
            the saved checkpoint and the steps whose files were deleted.

        Raises:
            NonFiniteStateError: naming the entries with NaN or infinity; nothing is written.
        """
        bad = non_finite_entries(state)
        if bad:
            raise NonFiniteStateError(f"{self.file_stem} step {step}: not finite: {', '.join(bad[:8])}")
        data = dumps(state, metadata)
        path = self.step_path(step)
        atomic_write_bytes(path, data)
        atomic_write_bytes(self.latest_path, data)
        self._foreign.discard(step)
        steps = [s for s in self.existing_steps() if s not in self._foreign]
        removed = steps[: max(len(steps) - self.keep, 0)]
        for s in removed:
            self.step_path(s).unlink(missing_ok=True)
        return SavedCheckpoint(steps=step, file_path=path, creation_time=creation_time), removed

    def load_latest(self) -> tuple[Any, dict[str, Any]]:
        return load_file(self.latest_path)
