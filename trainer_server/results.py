"""The results folder ML-Agents users expect: ``<results_dir>/<run-id>/``.

Why: users (and their scripts) look for ``configuration.yaml``, ``run_logs/timers.json``,
``run_logs/training_status.json`` and one folder per behavior holding checkpoints and
TensorBoard event files. This module owns that layout, the run-id checks
(``--resume``/``--force``) and the JSON files; checkpoints' bytes are in
``checkpoints.py``.

``training_status.json``::

    {"3DBall": {"checkpoints": [{"steps": 12000, "file_path": ".../3DBall/3DBall-12000.onnx",
                                 "reward": 1.23, "creation_time": 1700000000.0,
                                 "auxillary_file_paths": [".../3DBall/3DBall-12000.npz"]}, ...],
                "final_checkpoint": {"steps": 50000, "file_path": ".../3DBall.onnx", ...}},
     "<environment parameter>": {"lesson_num": 2},
     "metadata": {"stats_format_version": "0.3.0", "mlagents_version": <Tandem's>,
                  "torch_version": <JAX's>, "tandem_version": ..., "jax_version": ...}}

As in ML-Agents, a checkpoint's ``file_path`` is its ONNX model and the final checkpoint's
is the model copied to the run folder (``<run>/3DBall.onnx``); ``auxillary_file_paths``
keeps ML-Agents' spelling so existing scripts read it.
"""

from __future__ import annotations

import enum
import json
import re
import threading
from dataclasses import asdict, is_dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import yaml

from common.logging import get_logger
from trainer_server.checkpoints import SavedCheckpoint, atomic_write_text, remove_stale_temporaries
from trainer_server.timers import HierarchicalTimer

STATS_FORMAT_VERSION = "0.3.0"
RUN_LOGS = "run_logs"
TRAINING_STATUS = "training_status.json"
TIMERS = "timers.json"
CONFIGURATION = "configuration.yaml"

_log = get_logger("trainer_server.results")


class RunDirectoryError(RuntimeError):
    """The run-id's folder does not fit the flags (exists without --resume/--force, also in
    --inference; or missing with --resume)."""


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


#: ML-Agents' metadata keys, filled with what plays their part here: the trainer package's
#: version (Tandem's for ML-Agents') and the tensor library's that wrote the checkpoints
#: (JAX's for PyTorch's); their own keys below name them plainly
_MLAGENTS_KEYS = {"mlagents_version": "tandem_version", "torch_version": "jax_version"}


def versions_metadata() -> dict[str, str]:
    """What wrote this run; compared (with a warning on difference) on ``--resume``.

    The keys ML-Agents writes come first (``stats_format_version``, ``mlagents_version``,
    ``torch_version``: tools reading ML-Agents' files find them), then Tandem's own.
    """
    own = {
        "tandem_version": _version("tandem"),
        "jax_version": _version("jax"),
        "flax_version": _version("flax"),
        "optax_version": _version("optax"),
    }
    mlagents = {key: own[source] for key, source in _MLAGENTS_KEYS.items()}
    return {"stats_format_version": STATS_FORMAT_VERSION, **mlagents, **own}


def _delete_event_files(run_dir: Path) -> None:
    """``--force``: removes the TensorBoard event files in the run's folders, nothing else."""
    for path in sorted(run_dir.glob("*/events.out*")):
        if path.is_file():
            _log.warning("--force: deleting TensorBoard data left over from a previous run", path=str(path))
            path.unlink()


def behavior_folder_name(behavior: str) -> str:
    """A folder/file-safe name for a fully qualified behavior name.

    ``3DBall?team=0`` -> ``3DBall`` (as ML-Agents names the folder); another team keeps
    its number (``Soccer?team=1`` -> ``Soccer_team1``); characters unsafe in file names
    become ``_``.
    """
    brain, _, query = behavior.partition("?")
    team = re.fullmatch(r"team=(\d+)", query)
    name = brain if (not query or (team and team.group(1) == "0")) else f"{brain}_{query.replace('=', '')}"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "behavior"
    return name


def to_plain(value: Any) -> Any:
    """Settings objects (dataclasses, enums, paths, nested containers) as YAML-friendly builtins.

    Why: ``configuration.yaml`` and the TensorBoard "Hyperparameters" text show the same
    plain form of the settings.
    """
    if hasattr(value, "as_dict"):
        return to_plain(value.as_dict())
    if is_dataclass(value) and not isinstance(value, type):
        return to_plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, Path):
        return str(value)
    return value


class RunResults:
    """The results folder of one run.

    Use ``RunResults.prepare(...)`` to create it with the run-id checks.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_logs = self.run_dir / RUN_LOGS
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"metadata": versions_metadata()}

    @classmethod
    def prepare(
        cls, results_dir: Path | str, run_id: str, *, resume: bool, force: bool, inference: bool = False
    ) -> RunResults:
        """Checks the run-id against the flags and creates the folders, as ``mlagents-learn`` does.

        An existing run-id needs ``--resume`` (continue, or in ``--inference`` act with its
        latest checkpoint) or ``--force`` (start over); ``--resume`` needs an existing
        run-id. ``--force`` deletes only the TensorBoard event files of the behaviors'
        folders: earlier checkpoints stay, so a run forced over by mistake loses no model
        (ML-Agents' TensorBoard writer clears its event files the same way).

        Raises:
            RunDirectoryError: with the message to show the user.
        """
        run_dir = Path(results_dir) / run_id
        exists = run_dir.is_dir() and any(run_dir.iterdir())
        if resume and not exists:
            raise RunDirectoryError(
                f"--resume: no previous run {run_id!r} in {run_dir.parent}/. Start a new run by leaving "
                "out --resume."
            )
        if exists and not resume:
            if not force:
                use = "add --resume to act with its latest checkpoint" if inference else "add --resume to continue it"
                raise RunDirectoryError(
                    f"Run {run_id!r} already has results in {run_dir}/. Choose another --run-id, {use}, "
                    "or add --force to start it over (its TensorBoard event files are deleted)."
                )
            _delete_event_files(run_dir)
        results = cls(run_dir)
        results.run_logs.mkdir(parents=True, exist_ok=True)
        for folder in (results.run_dir, results.run_logs):  # a writer killed mid-write left them
            removed = remove_stale_temporaries(folder)
            if removed:
                _log.warning("removed temporaries of an interrupted write", folder=str(folder), count=removed)
        if resume:
            results._load_status()
        return results

    # ------------------------------------------------------------------ paths

    def behavior_dir(self, behavior: str) -> Path:
        return self.run_dir / behavior_folder_name(behavior)

    def final_model_path(self, behavior: str) -> Path:
        """``<run>/<Behavior>.onnx``: the latest model, the one Unity users drag into their project."""
        return self.run_dir / f"{behavior_folder_name(behavior)}.onnx"

    @property
    def training_status_path(self) -> Path:
        return self.run_logs / TRAINING_STATUS

    @property
    def timers_path(self) -> Path:
        return self.run_logs / TIMERS

    @property
    def configuration_path(self) -> Path:
        return self.run_dir / CONFIGURATION

    # ------------------------------------------------------------------ files

    def write_configuration(self, config: Any) -> None:
        """Writes the resolved configuration (``RunOptions.as_dict()`` or a dict) as YAML."""
        text = yaml.safe_dump(to_plain(config), sort_keys=False, default_flow_style=False)
        atomic_write_text(self.configuration_path, text)

    def write_timers(self, timer: HierarchicalTimer) -> None:
        atomic_write_text(self.timers_path, json.dumps(timer.as_dict(), indent=4))

    def _load_status(self) -> None:
        path = self.training_status_path
        if not path.is_file():
            _log.warning("resuming without a previous training_status.json", path=str(path))
            return
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            _log.warning("ignoring an unreadable training_status.json", path=str(path), error=str(e))
            return
        old_meta = previous.pop("metadata", {}) if isinstance(previous, dict) else {}
        for key, value in versions_metadata().items():
            if key not in _MLAGENTS_KEYS and old_meta.get(key) not in (None, value):  # each difference once
                _log.warning(
                    "the resumed run was written by another version", key=key, previous=old_meta.get(key), now=value
                )
        with self._lock:
            self._status.update(previous)

    def behavior_status(self, behavior: str) -> dict[str, Any]:
        """A copy of one behavior's entry (``checkpoints``, ``final_checkpoint``...)."""
        with self._lock:
            return json.loads(json.dumps(self._status.get(behavior_folder_name(behavior), {})))

    def saved_steps(self) -> dict[str, int]:
        """Per behavior folder name in training_status.json: the step of its latest checkpoint."""
        with self._lock:
            out = {}
            for name, entry in self._status.items():
                if name == "metadata" or not isinstance(entry, dict):
                    continue
                steps = [c.get("steps", 0) for c in entry.get("checkpoints", []) if isinstance(c, dict)]
                final = entry.get("final_checkpoint")
                if isinstance(final, dict):
                    steps.append(final.get("steps", 0))
                if steps:
                    out[name] = int(max(steps))
            return out

    def set_behavior_value(self, behavior: str, key: str, value: Any) -> None:
        """Stores extra per-behavior state (e.g. the policy version) in training_status.json."""
        with self._lock:
            self._status.setdefault(behavior_folder_name(behavior), {})[key] = value
        self.write_training_status()

    def parameter_state(self, parameter: str) -> dict[str, Any]:
        """A copy of an environment parameter's entry (``{"lesson_num": n}``), as ML-Agents keeps it."""
        with self._lock:
            entry = self._status.get(parameter, {})
            return dict(entry) if isinstance(entry, dict) else {}

    def set_parameter_state(self, parameter: str, key: str, value: Any) -> None:
        """Stores an environment parameter's state (its curriculum lesson) in training_status.json."""
        with self._lock:
            self._status.setdefault(parameter, {})[key] = value
        self.write_training_status()

    def record_checkpoint(
        self,
        behavior: str,
        saved: SavedCheckpoint,
        reward: float | None,
        removed_steps: list[int],
        final: bool = False,
        model_path: Path | None = None,
    ) -> None:
        """Adds a checkpoint to training_status.json, dropping the ones whose files were pruned.

        As in ML-Agents, ``file_path`` is the ONNX model when one was exported
        (``model_path``) and the checkpoint is listed in ``auxillary_file_paths``; with
        ``final``, the same entry pointing at the run folder's copy of the model
        (:meth:`final_model_path`) becomes ``final_checkpoint``.
        """
        entry = {
            "steps": int(saved.steps),
            "file_path": str(model_path if model_path is not None else saved.file_path),
            "reward": None if reward is None else float(reward),
            "creation_time": float(saved.creation_time),
            "auxillary_file_paths": [str(saved.file_path)] if model_path is not None else [],
        }
        removed = set(removed_steps)
        with self._lock:
            status = self._status.setdefault(behavior_folder_name(behavior), {})
            kept = [c for c in status.get("checkpoints", []) if c.get("steps") not in removed and c.get("steps") != saved.steps]
            status["checkpoints"] = [*kept, entry]
            if final:
                status["final_checkpoint"] = self._final_entry(behavior, entry)
        self.write_training_status()

    def mark_final(self, behavior: str, steps: int) -> None:
        """Marks the already recorded checkpoint of ``steps`` as the run's final one."""
        with self._lock:
            status = self._status.setdefault(behavior_folder_name(behavior), {})
            for entry in status.get("checkpoints", []):
                if entry.get("steps") == steps:
                    status["final_checkpoint"] = self._final_entry(behavior, entry)
        self.write_training_status()

    def _final_entry(self, behavior: str, entry: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint entry as ``final_checkpoint``: its model is the run folder's copy (when it has one)."""
        final = dict(entry)
        if str(entry.get("file_path", "")).endswith(".onnx"):  # a model was exported (and copied) at this step
            final["file_path"] = str(self.final_model_path(behavior))
        return final

    def write_training_status(self) -> None:
        with self._lock:
            text = json.dumps(self._status, indent=4)
        atomic_write_text(self.training_status_path, text)
