"""Training statistics: aggregation, TensorBoard event files and the console summary.

Why: ML-Agents users compare runs in TensorBoard by tag name (``Environment/Cumulative
Reward``, ``Losses/Policy Loss``...), read the same values as gauges in
``run_logs/timers.json`` and watch one console line per ``summary_freq`` steps. Values
accumulate per behavior between summaries; each summary writes one point per tag at the
summary step, aggregated as the value's source asked (the stats side channel's
``StatsAggregationMethod``: average, most recent, sum, histogram).

As in ML-Agents, one tag is one series whoever sends it: a stat from Unity's stats side
channel named like one of the trainer's own (``Environment/Episode Length``) joins the
trainer's values; the aggregation of the latest value added decides how the window is
summarized, and a "most recent" value replaces the values gathered so far.
"""

from __future__ import annotations

import enum
import math
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.logging import console
from trainer_server.timers import HierarchicalTimer

CUMULATIVE_REWARD = "Environment/Cumulative Reward"
EPISODE_LENGTH = "Environment/Episode Length"
EXTRINSIC_REWARD = "Policy/Extrinsic Reward"
POLICY_LAG = "Policy/Lag"
#: steps a gateway sent that the learner did not train on: acted by a policy too old for
#: the behavior's coupling (``trainer_server.collection``); a Tandem tag, summed per summary
STALE_STEPS_DROPPED = "Policy/Stale Steps Dropped"
#: updates skipped because their result was not finite (a learner's metric, 1.0 when skipped)
SKIPPED_UPDATES = "Policy/Skipped Updates"
IS_TRAINING = "Is Training"
STEP = "Step"
#: recorded (console, timers.json gauges) but not written to TensorBoard, as ML-Agents hides them
TENSORBOARD_HIDDEN = frozenset({IS_TRAINING, STEP})
#: suffix of the histogram written beside a HISTOGRAM tag's scalar (ML-Agents' ``add_histogram`` tag)
HISTOGRAM_SUFFIX = "_hist"
GROUP_CUMULATIVE_REWARD = "Environment/Group Cumulative Reward"
#: self-play's ELO of the learning policy (``trainer_server.self_play``)
SELF_PLAY_ELO = "Self-play/ELO"

#: the component of the console lines' JSON events (``--log-json``)
_CONSOLE = "trainer_server.summary"


class Aggregation(enum.Enum):
    """How values of one tag combine between two summaries (ML-Agents' StatsAggregationMethod)."""

    AVERAGE = 0
    MOST_RECENT = 1
    SUM = 2
    HISTOGRAM = 3

    @classmethod
    def parse(cls, text: str) -> Aggregation:
        """Reads ``"average"``, ``"MOST_RECENT"``, ``"2"``...; empty means average.

        Raises:
            ValueError: naming the unknown aggregation.
        """
        key = (text or "").strip().upper().replace(" ", "_").replace("-", "_")
        if not key:
            return cls.AVERAGE
        if key.isdigit() and int(key) in {m.value for m in cls}:
            return cls(int(key))
        if key == "MOSTRECENT":
            key = "MOST_RECENT"
        try:
            return cls[key]
        except KeyError:
            names = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"unknown stat aggregation {text!r} (one of {names})") from None


@dataclass(frozen=True)
class StatSummary:
    """One tag's values since the last summary.

    Attributes:
        value: the aggregated value written to TensorBoard (the sum for SUM, else the mean).
        mean: mean of the values; std: their standard deviation; count: how many;
        total: their sum.
        values: the raw values (for histograms).
    """

    value: float
    mean: float
    std: float
    count: int
    total: float
    aggregation: Aggregation
    values: tuple[float, ...]


class BehaviorStats:
    """Values of one behavior accumulated between summaries (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, list[float]] = {}
        self._aggregation: dict[str, Aggregation] = {}

    def add(self, tag: str, value: float, aggregation: Aggregation = Aggregation.AVERAGE) -> None:
        """Adds a value to ``tag``'s window; the latest value's aggregation is the tag's.

        A MOST_RECENT value replaces the window's values (ML-Agents' ``set_stat``), any
        other is appended (``add_stat``), whoever sent the earlier ones.
        """
        with self._lock:
            if aggregation is Aggregation.MOST_RECENT:
                self._values[tag] = [float(value)]
            else:
                self._values.setdefault(tag, []).append(float(value))
            self._aggregation[tag] = aggregation

    def peek_mean(self, tag: str) -> float | None:
        """The mean of ``tag`` since the last summary, or None without values."""
        with self._lock:
            values = self._values.get(tag)
            return float(np.mean(values)) if values else None

    def summarize(self) -> dict[str, StatSummary]:
        """Aggregates every tag and starts a new window."""
        with self._lock:
            values, aggregation = self._values, self._aggregation
            self._values, self._aggregation = {}, {}
        out = {}
        for tag, vals in values.items():
            if not vals:
                continue
            arr = np.asarray(vals, dtype=np.float64)
            agg = aggregation[tag]
            mean, total = float(arr.mean()), float(arr.sum())
            out[tag] = StatSummary(
                value=total if agg is Aggregation.SUM else mean,
                mean=mean,
                std=float(arr.std()),
                count=int(arr.size),
                total=total,
                aggregation=agg,
                values=tuple(vals),
            )
        return out


def _tensorflow_bins() -> np.ndarray:
    """TensorFlow's default histogram bucket edges, which ``add_histogram(bins="tensorflow")`` uses."""
    edges, v = [], 1e-12
    while v < 1e20:
        edges.append(v)
        v *= 1.1
    positive = np.asarray(edges)
    return np.concatenate([-positive[::-1], [0.0], positive])


_TENSORFLOW_BINS = _tensorflow_bins()


def gauge_name(behavior: str, tag: str, field: str) -> str:
    """The ``timers.json`` gauge of a tag: ``3DBall.Environment.CumulativeReward.mean``.

    As ML-Agents' GaugeWriter names them: ``/`` becomes ``.`` and spaces go.
    """
    return f"{behavior}.{tag}.{field}".replace("/", ".").replace(" ", "")


def write_gauges(timer: HierarchicalTimer, behavior: str, summaries: dict[str, StatSummary]) -> None:
    """Sets the ``.mean`` and ``.sum`` gauges of every summarized tag, hidden ones included."""
    for tag, summary in summaries.items():
        timer.set_gauge(gauge_name(behavior, tag, "mean"), summary.mean)
        timer.set_gauge(gauge_name(behavior, tag, "sum"), summary.total)


class TensorBoardWriter:
    """One behavior's event files in ``<run>/<Behavior>/events.out.tfevents...``.

    Summaries are built here rather than with ``SummaryWriter.add_scalar``, which would
    rewrite ML-Agents' tag names ("Environment/Cumulative Reward" has a space).
    """

    def __init__(self, logdir: Path) -> None:
        from tensorboardX import FileWriter  # imported here: it is slow to import

        self.logdir = Path(logdir)
        self._writer = FileWriter(str(self.logdir), flush_secs=10)

    def write(self, step: int, summaries: dict[str, StatSummary]) -> None:
        """One scalar per tag (except ``TENSORBOARD_HIDDEN``) and, for a HISTOGRAM tag, its
        histogram as ``<tag>_hist``, all at ``step`` (ML-Agents' TensorboardWriter)."""
        from tensorboardX import summary as tb_summary
        from tensorboardX.proto.summary_pb2 import Summary

        shown = {tag: s for tag, s in summaries.items() if tag not in TENSORBOARD_HIDDEN}
        values = [Summary.Value(tag=tag, simple_value=s.value) for tag, s in shown.items() if math.isfinite(s.value)]
        self._writer.add_summary(Summary(value=values), step)
        for tag, s in shown.items():
            finite = np.asarray(s.values)[np.isfinite(s.values)]
            if s.aggregation is Aggregation.HISTOGRAM and finite.size:
                # built under a placeholder name, then tagged as given: tensorboardX would rewrite the
                # space in the tag and log that it did, at every summary
                histogram = tb_summary.histogram("histogram", finite, _TENSORFLOW_BINS)
                histogram.value[0].tag = tag + HISTOGRAM_SUFFIX
                self._writer.add_summary(histogram, step)
        self._writer.flush()

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        from tensorboardX import summary as tb_summary

        self._writer.add_summary(tb_summary.text(tag, text), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def console_summary(
    behavior: str,
    step: int,
    elapsed: float,
    summaries: dict[str, StatSummary],
    training: bool,
    episode_versions: tuple[int, int] | None = None,
) -> tuple[str, dict[str, float | int | None]]:
    """The ML-Agents console line (``mlagents.trainers.stats.ConsoleWriter``) and its fields.

    ``3DBall. Step: 12000. Time Elapsed: 35.250 s. Mean Reward: 2.000. Std of Reward: 0.816.
    Training.``: three decimals, as ML-Agents prints them; a group reward (POCA) takes the
    place of the standard deviation, as there. Tandem adds, after ML-Agents' line, which
    policy versions acted the episodes' last steps and the mean policy lag of the steps
    trained (``Episodes by policies 38-41, lag 0.00.``), so that a reward is never read as
    the current policy's when it is not.
    """
    reward = summaries.get(CUMULATIVE_REWARD)
    state = "Training." if training else "Not Training."
    head = f"{behavior}. Step: {step}. Time Elapsed: {elapsed:0.3f} s."
    if reward is None:
        line = f"{head} No episode was completed since last summary. {state}"
        return line, {"step": step, "elapsed_s": round(elapsed, 3), "mean_reward": None, "std_reward": None}
    group = summaries.get(GROUP_CUMULATIVE_REWARD)
    spread = f"Mean Group Reward: {group.mean:0.3f}" if group is not None else f"Std of Reward: {reward.std:0.3f}"
    line = f"{head} Mean Reward: {reward.mean:0.3f}. {spread}. {state}"
    elo = summaries.get(SELF_PLAY_ELO)
    if elo is not None:  # self-play behaviors: ML-Agents appends the learner's ELO
        line += f" ELO: {elo.mean:0.3f}."
    fields: dict[str, float | int | None] = {
        "step": step,
        "elapsed_s": round(elapsed, 3),
        "mean_reward": round(reward.mean, 6),
        "std_reward": round(reward.std, 6),
        "episodes": reward.count,
    }
    lag = summaries.get(POLICY_LAG)
    if episode_versions is not None and training:
        low, high = episode_versions
        line += f" Episodes by policies {low}-{high}" if low != high else f" Episodes by policy {low}"
        line += f", lag {lag.mean:0.2f}." if lag is not None else "."
        fields.update(first_policy=low, last_policy=high)
    if lag is not None:
        fields["policy_lag"] = round(lag.mean, 4)
    return line, fields


def log_summary(
    behavior: str,
    step: int,
    elapsed: float,
    summaries: dict[str, StatSummary],
    training: bool,
    episode_versions: tuple[int, int] | None = None,
) -> None:
    """Prints the summary line (``[INFO] 3DBall. Step: 12000. Time Elapsed: ...``) on stdout."""
    line, fields = console_summary(behavior, step, elapsed, summaries, training, episode_versions)
    console(line, component=_CONSOLE, behavior=behavior, **fields)


def hyperparameters_text(behavior: str, settings: dict[str, Any]) -> str:
    """ML-Agents' start-up dump of a behavior's settings (``ConsoleWriter.add_property``).

    ``Hyperparameters for behavior name 3DBall: `` then one ``<tab>key:<tab>value`` line per
    setting, nested settings indented two spaces per level, values as Python prints them.
    """

    def lines(values: dict[str, Any], depth: int) -> list[str]:
        out = []
        for key, value in values.items():
            if isinstance(value, dict):
                out.append(f"\t{'  ' * depth}{key}:\t")
                out += lines(value, depth + 1)
            else:
                out.append(f"\t{'  ' * depth}{key}:\t{value}")
        return out

    return "\n".join([f"Hyperparameters for behavior name {behavior}: ", *lines(settings, 0)])


def log_hyperparameters(behavior: str, settings: dict[str, Any]) -> None:
    """Prints the hyperparameter dump when a behavior's trainer is created, as ML-Agents does."""
    console(hyperparameters_text(behavior, settings), component=_CONSOLE, behavior=behavior)


def log_exported(path: Path) -> None:
    """Prints ``Exported <path>.onnx`` when a model is written, as ML-Agents' model serializer does."""
    console(f"Exported {path}", component=_CONSOLE, path=str(path))


def log_copied(source: Path, destination: Path) -> None:
    """Prints ``Copied <step model> to <run>/<Behavior>.onnx.``, ML-Agents' line for the final model."""
    console(f"Copied {source} to {destination}.", component=_CONSOLE, source=str(source), destination=str(destination))


# --------------------------------------------------------------------------- reading event files


def _read_records(path: Path):
    """Yields the payloads of a TFRecord file (length, crc, data, crc), stopping at a torn tail."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return
            yield data


def _summary_values(logdir: Path):
    """Yields ``(step, Summary.Value)`` of every summary in the event files of ``logdir`` (not recursive)."""
    from tensorboardX.proto import event_pb2

    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for record in _read_records(path):
            event = event_pb2.Event.FromString(record)
            if event.HasField("summary"):
                for value in event.summary.value:
                    yield int(event.step), value


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Reads every scalar of the event files in ``logdir`` (not recursive).

    Returns:
        tag -> ``[(step, value), ...]`` in file order. Lets tests and scripts check
        TensorBoard output without TensorBoard installed.
    """
    out: dict[str, list[tuple[int, float]]] = {}
    for step, value in _summary_values(logdir):
        if value.WhichOneof("value") == "simple_value":
            out.setdefault(value.tag, []).append((step, float(value.simple_value)))
    return out


def read_histograms(logdir: Path) -> dict[str, list[tuple[int, int, float]]]:
    """Reads every histogram of the event files in ``logdir`` (not recursive).

    Returns:
        tag -> ``[(step, number of values, their sum), ...]`` in file order.
    """
    out: dict[str, list[tuple[int, int, float]]] = {}
    for step, value in _summary_values(logdir):
        if value.WhichOneof("value") == "histo":
            out.setdefault(value.tag, []).append((step, int(value.histo.num), float(value.histo.sum)))
    return out
