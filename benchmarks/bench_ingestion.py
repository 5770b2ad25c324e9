"""How much experience one trainer takes in: N synthetic gateways replaying recorded chunks.

Why: gateways scale out beside Unity builds; the question is how many of them one trainer
absorbs before it, not the environments, limits the run. This benchmark measures it over
the real wire (tandem.v1.Trainer.Connect, gRPC on loopback) with a real ``tandem-trainer``
process:

1. **Recording, and the one-gateway baseline.** A recording Trainer server (grants without
   limit, acks at once, a snapshot of random parameters) takes the experience chunks of a
   real ``tandem-gateway`` acting on one stand-in instance (3DBall: 12 agents, continuous;
   GridWorld: a 24x24 camera and masked discrete actions). Their agent steps per second are
   what one gateway with one instance produces: the baseline.
2. **Ingestion.** A ``tandem-trainer`` with the task's PPO configuration (``coupling: async``
   with a ``max_policy_lag`` no chunk exceeds, so that every step is processed and trained
   on, never dropped as stale) serves N synthetic gateway clients (threads of this process),
   each replaying the recorded chunks at full speed (renumbered, pre-encoded: the client
   costs nothing but the send), at most ``WINDOW`` unacknowledged chunks each, as a gateway's
   buffer. Measured over a window after the first update: agent steps acknowledged per second
   (an ack means the step is in the learner), the trainer process's CPU seconds per 10k agent
   steps (/proc), its resident memory (RSS) at the start and end of the window and its
   maximum, and the snapshot fan-out: per policy version, the time between the first and
   the last of the N clients receiving it, and the snapshot's size. The trainer's own
   ``timers.json`` tells where its training thread spent the time.

With ``--baseline-commit REV`` every run is made twice side by side, first with the trainer
of that commit (its tree from ``git archive``, run with this tree's virtual environment and
generated protobuf code: the protos must not differ), then with this tree's: before/after
figures under the same load.

Run: ``python -m benchmarks.bench_ingestion [--seconds S] [--clients 1,4,16] [--tasks 3dball,gridworld] [--baseline-commit main]``.
The clients share this machine's 2 cores with the trainer, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import grpc
import numpy as np
import yaml

from benchmarks.ports import free_base_port
from benchmarks.report import cpu_name, write_results
from common import protowire
from common import specs as specs_mod
from common.architecture import PolicyArchitecture, make_snapshot, parameter_shapes
from common.logging import configure_logging, get_logger
from tandem.v1 import trainer_pb2, trainer_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "bench_ingestion.md"
#: task -> (stand-in task name, behavior, trainer configuration)
TASKS = {
    "3dball": ("3dball", "3DBall", REPO / "configs" / "ppo" / "3DBall.yaml"),
    "gridworld": ("gridworld", "GridWorld", REPO / "configs" / "ppo" / "GridWorld.yaml"),
}
#: unacknowledged chunks a synthetic gateway keeps in flight
WINDOW = 16
_CONNECT = "/tandem.v1.Trainer/Connect"

_log = get_logger("benchmarks.bench_ingestion")


# -- 1. recording ------------------------------------------------------------------------------
@dataclass
class Recording:
    """One gateway's stream: its Hello, its chunks (sequence cleared) and their agent steps."""

    task: str
    hello: trainer_pb2.Hello | None = None
    chunks: list[bytes] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    #: CPU seconds of the gateway and its children (worker, stand-in) while streaming
    cpu_s: float = 0.0
    cpu_steps: int = 0

    def rate(self) -> float:
        """Agent steps per second the gateway streamed, from its first chunk to its last."""
        if len(self.times) < 2:
            return 0.0
        return float(sum(self.steps[1:]) / (self.times[-1] - self.times[0]))

    def cpu_per_10k(self) -> float:
        """CPU seconds the gateway, its worker and the stand-in spent per 10k agent steps."""
        return self.cpu_s / max(self.cpu_steps, 1) * 10_000

    def bytes_per_step(self) -> float:
        return sum(len(c) for c in self.chunks) / max(1, sum(self.steps))


def _random_params(arch: PolicyArchitecture) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in parameter_shapes(arch).items():
        if name.startswith("normalizer/var"):
            out[name] = np.ones(shape, np.float32)
        else:
            out[name] = (rng.standard_normal(shape) * (0.0 if "normalizer" in name else 0.1)).astype(np.float32)
    return out


class _Recorder(trainer_pb2_grpc.TrainerServicer):
    """A Trainer that grants without limit, acks every chunk at once and keeps it."""

    def __init__(self, recording: Recording, time_horizon: int) -> None:
        self.recording = recording
        self.time_horizon = time_horizon
        self.lock = threading.Lock()

    def Connect(self, request_iterator, context):
        hello = next(request_iterator).hello
        with self.lock:
            self.recording.hello = hello
        yield trainer_pb2.TrainerMessage(welcome=trainer_pb2.Welcome(last_accepted_sequence=0, run_id="recording"))
        for spec_msg in hello.behaviors:
            spec = specs_mod.from_proto(spec_msg)
            arch = PolicyArchitecture(spec, hidden_units=128, num_layers=2)
            yield trainer_pb2.TrainerMessage(snapshot=make_snapshot(spec.name, 1, arch, _random_params(arch), self.time_horizon))
            yield trainer_pb2.TrainerMessage(grant=trainer_pb2.CollectionGrant(behavior=spec.name, agent_steps=10**12))
        acks: queue.Queue = queue.Queue()

        def read() -> None:
            try:
                for message in request_iterator:
                    if message.WhichOneof("message") != "chunk":
                        continue
                    chunk = message.chunk
                    sequence = chunk.sequence
                    steps = sum(int(t.rewards.shape[0]) if t.rewards.shape else 0 for t in chunk.trajectories)
                    chunk.sequence = 0
                    with self.lock:
                        self.recording.chunks.append(chunk.SerializeToString())
                        self.recording.steps.append(steps)
                        self.recording.times.append(time.monotonic())
                    acks.put(sequence)
            except grpc.RpcError:
                pass
            finally:
                acks.put(None)

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                sequence = acks.get(timeout=0.2)
            except queue.Empty:
                continue
            if sequence is None:
                return
            yield trainer_pb2.TrainerMessage(ack=trainer_pb2.ChunkAck(sequence=sequence))


def _gateway_exe() -> list[str]:
    exe = shutil.which("tandem-gateway", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "gateway.cli"]


def record(task: str, seconds: float) -> Recording:
    """``seconds`` of a real gateway's stream with one stand-in instance of ``task``."""
    standin_task, behavior, config = TASKS[task]
    time_horizon = int(yaml.safe_load(config.read_text())["behaviors"][behavior]["time_horizon"])
    recording = Recording(task)
    # a chunk of 512 GridWorld steps is ~4.3 MB: above gRPC's default 4 MiB receive limit
    limits = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=limits)
    trainer_pb2_grpc.add_TrainerServicer_to_server(_Recorder(recording, time_horizon), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    cmd = _gateway_exe() + [
        "--trainer", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0", "--base-port", str(free_base_port()),
        "--seed", "1", "--env-args", "--task", standin_task,
    ]
    gateway = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=None if os.environ.get("BENCH_VERBOSE") else subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 420  # the stand-in starts slowly on a loaded machine
        while not recording.times and time.monotonic() < deadline and gateway.poll() is None:
            time.sleep(0.2)
        if not recording.times:
            raise RuntimeError(f"{task}: the gateway streamed nothing (exit code {gateway.poll()})")
        end = recording.times[0] + seconds
        cpu0, steps0 = _tree_cpu_s(gateway.pid), sum(recording.steps)
        while time.monotonic() < end and gateway.poll() is None:
            time.sleep(0.2)
        recording.cpu_s, recording.cpu_steps = _tree_cpu_s(gateway.pid) - cpu0, sum(recording.steps) - steps0
    finally:
        gateway.terminate()
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        server.stop(1).wait()
    _log.info("recorded", task=task, chunks=len(recording.chunks), steps=sum(recording.steps), rate=round(recording.rate()))
    return recording


# -- 2. ingestion --------------------------------------------------------------------------------
def _message(number: int, payload: bytes) -> bytes:
    return protowire.length_delimited(number, payload)


def chunk_message(sequence: int, chunk: bytes) -> bytes:
    """A serialized ``GatewayMessage{chunk}`` from a serialized ``ExperienceChunk`` whose
    ``sequence`` is unset: the field is prepended (protobuf takes fields in any order), so a
    replayed chunk is renumbered without parsing or serializing it again."""
    return _message(3, protowire.tag(1, 0) + protowire.varint(sequence) + chunk)


class _Client:
    """A synthetic gateway: Hello, then the recording's chunks in a loop, ``WINDOW`` in flight."""

    def __init__(self, address: str, name: str, recording: Recording) -> None:
        hello = trainer_pb2.Hello()
        hello.CopyFrom(recording.hello)
        hello.gateway_id = name
        self._hello = _message(1, hello.SerializeToString())
        self._recording = recording
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
        )
        self._stream = self._channel.stream_stream(
            _CONNECT, request_serializer=lambda b: b, response_deserializer=trainer_pb2.TrainerMessage.FromString
        )
        self._slots = threading.Semaphore(WINDOW)
        self._stop = threading.Event()
        self._steps_of: dict[int, int] = {}
        self.lock = threading.Lock()
        #: (monotonic time, agent steps) per acknowledged chunk
        self.acked: list[tuple[float, int]] = []
        #: policy version -> (arrival time, snapshot bytes)
        self.snapshots: dict[int, tuple[float, int]] = {}
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _requests(self):
        yield self._hello
        sequence = 0
        while not self._stop.is_set():
            for chunk, steps in zip(self._recording.chunks, self._recording.steps):
                while not self._slots.acquire(timeout=0.2):
                    if self._stop.is_set():
                        return
                sequence += 1
                self._steps_of[sequence] = steps
                yield chunk_message(sequence, chunk)
                if self._stop.is_set():
                    return

    def _run(self) -> None:
        try:
            for message in self._stream(self._requests()):
                kind = message.WhichOneof("message")
                now = time.monotonic()
                if kind == "ack":
                    with self.lock:
                        self.acked.append((now, self._steps_of.pop(message.ack.sequence, 0)))
                    self._slots.release()
                elif kind == "snapshot":
                    with self.lock:
                        self.snapshots.setdefault(message.snapshot.version, (now, message.ByteSize()))
        except grpc.RpcError as e:
            if not self._stop.is_set():
                self.error = f"{e.code().name}: {e.details()}"

    def steps_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(steps for t, steps in self.acked if start <= t < end)

    def stop(self) -> None:
        self._stop.set()
        self._channel.close()
        self._thread.join(10)


def _trainer_config(task: str, folder: Path) -> Path:
    """The task's PPO configuration, ``coupling: async`` with no step too old, never finishing."""
    _, behavior, path = TASKS[task]
    config = yaml.safe_load(path.read_text())
    section = config["behaviors"][behavior]
    section["max_steps"] = 10**9
    section["tandem"] = {"coupling": "async", "max_policy_lag": 10**6, "collection_window": 10**9}
    out = folder / f"{task}.yaml"
    out.write_text(yaml.safe_dump(config))
    return out


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant (the gateway, its workers, Unity)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    total = 0.0
    for pid in parents:
        ancestor = pid
        while ancestor not in (0, 1, root) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == root:
            try:
                total += _proc_cpu_s(pid)
            except OSError:
                continue
    return total


def _proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def baseline_tree(commit: str, folder: Path) -> Path:
    """``commit``'s source tree in ``folder`` (``git archive``), with this tree's generated
    protobuf code (the protos must be the same)."""
    tree = folder / "baseline-tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for generated in (REPO / "protos" / "tandem" / "v1").glob("*_pb2*"):
        shutil.copy2(generated, tree / "protos" / "tandem" / "v1" / generated.name)
    return tree


def _start_trainer(config: Path, folder: Path, tree: Path | None = None) -> tuple[subprocess.Popen, str, list[dict]]:
    """A ``tandem-trainer`` on ``config``: this tree's, or ``tree``'s (``baseline_tree``)."""
    trainer = shutil.which("tandem-trainer", path=os.path.dirname(sys.executable))
    cmd = ([trainer] if trainer and tree is None else [sys.executable, "-m", "trainer_server.cli"]) + [
        str(config), "--run-id", "ingest", "--results-dir", str(folder), "--listen", "127.0.0.1:0", "--log-json",
        "--force",
    ]
    env = None
    if tree is not None:  # its modules before the editable install of this tree
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "protos")])}
    process = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tree
    )
    events: list[dict] = []
    ready = threading.Event()
    log = (folder / "trainer.log").open("w")

    def pump() -> None:
        for line in process.stderr:
            log.write(line)
            log.flush()
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
            if events[-1].get("event") == "trainer ready":
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(180):
        process.kill()
        raise RuntimeError(f"the trainer did not start: {events[-5:]}")
    address = next(e["address"] for e in events if e.get("event") == "trainer ready")
    return process, address, events


def _stop_trainer(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _top_timers(path: Path, count: int = 5) -> list[tuple[str, float, int]]:
    """(block, total seconds, count) of the trainer's busiest timer blocks under the training loop."""
    try:
        root = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    rows: list[tuple[str, float, int]] = []

    def walk(node: dict, prefix: str) -> None:
        for name, child in (node.get("children") or {}).items():
            rows.append((prefix + name, float(child.get("total", 0.0)), int(child.get("count", 0))))
            walk(child, prefix + name + ".")

    walk(root, "")
    loop = [r for r in rows if r[0].startswith("training_loop.") and r[0].count(".") <= 3]
    return sorted(loop, key=lambda r: -r[1])[:count]


def ingest(recording: Recording, clients: int, seconds: float, folder: Path, tree: Path | None = None) -> dict:
    """One trainer (this tree's, or ``tree``'s), ``clients`` synthetic gateways replaying
    ``recording``; the figures."""
    process, address, _ = _start_trainer(_trainer_config(recording.task, folder), folder, tree)
    pool = [_Client(address, f"synthetic-{i}", recording) for i in range(clients)]
    rss: list[tuple[float, float]] = []
    try:
        for client in pool:
            client.start()
        # warm-up: until every client has the first trained version (2: the update is compiled) or 300 s
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not all(2 in c.snapshots for c in pool):
            time.sleep(0.2)
        start, cpu0 = time.monotonic(), _proc_cpu_s(process.pid)
        while time.monotonic() - start < seconds:
            rss.append((time.monotonic() - start, _proc_rss_mib(process.pid)))
            time.sleep(0.5)
        end, cpu1 = time.monotonic(), _proc_cpu_s(process.pid)
        rss.append((end - start, _proc_rss_mib(process.pid)))
        steps = sum(c.steps_between(start, end) for c in pool)
        errors = [c.error for c in pool if c.error]
    finally:
        for client in pool:
            client.stop()
        _stop_trainer(process)
    spreads, sizes = [], []
    versions = set.intersection(*(set(c.snapshots) for c in pool)) - {1}  # 1: sent at Hello, not fanned out
    for version in sorted(versions):
        times = [c.snapshots[version][0] for c in pool]
        spreads.append(max(times) - min(times))
        sizes.append(pool[0].snapshots[version][1])
    rate = steps / (end - start)
    third = max(1, len(rss) // 3)
    return {
        "task": recording.task,
        "clients": clients,
        "steps": steps,
        "rate": rate,
        "cpu_per_10k": (cpu1 - cpu0) / max(steps, 1) * 10_000,
        "cpu_share": (cpu1 - cpu0) / (end - start),
        "rss_start": float(np.mean([r for _, r in rss[:third]])),
        "rss_end": float(np.mean([r for _, r in rss[-third:]])),
        "rss_max": max(r for _, r in rss),
        "versions": len(spreads),
        "fanout_mean_ms": 1000 * float(np.mean(spreads)) if spreads else float("nan"),
        "fanout_max_ms": 1000 * float(np.max(spreads)) if spreads else float("nan"),
        "snapshot_bytes": int(np.median(sizes)) if sizes else 0,
        "timers": _top_timers(folder / "ingest" / "run_logs" / "timers.json"),
        "errors": errors,
    }


# -- the report -------------------------------------------------------------------------------------
def _render(
    argv: list[str],
    recordings: dict[str, Recording],
    rows: list[dict],
    seconds: float,
    baseline: list[dict] | None = None,
    baseline_commit: str = "",
) -> str:
    """The results page; ``baseline``: the ``--baseline-commit`` trainer's rows, in ``rows``' order."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# bench_ingestion: one trainer, N synthetic gateways replaying recorded chunks",
        "",
        f"Command: `python -m benchmarks.bench_ingestion {' '.join(argv)}`".rstrip() + f"  ",
        f"Date: {now}  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, CPU only (the clients share the cores with the trainer); "
        f"load average at the end {os.getloadavg()[0]:.1f} (other processes share the cores: rates are floors, "
        "CPU seconds per 10k steps compare across loads)",
        "",
        "\"x one gateway, per CPU second\" compares CPU costs: how many gateways (each with one stand-in "
        "instance) one trainer core keeps up with.",
        "",
        "## One gateway, one stand-in instance (the baseline; recorded stream)",
        "",
        "| task | agent steps/s streamed | CPU s per 10k steps (gateway + worker + stand-in) | chunks "
        "| mean agent steps per chunk | bytes per agent step on the wire |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for task, rec in recordings.items():
        lines.append(
            f"| {task} | {rec.rate():,.0f} | {rec.cpu_per_10k():.2f} | {len(rec.chunks)} | {np.mean(rec.steps):.1f} "
            f"| {rec.bytes_per_step():,.0f} |"
        )
    lines += [
        "",
        f"## The trainer's ingestion ({seconds:.0f} s window after the first update; PPO, every step trained)",
        "",
        "| task | gateways | agent steps/s accepted | x one gateway | trainer CPU s per 10k steps "
        "| x one gateway, per CPU second | trainer CPU share "
        "| RSS MiB start -> end (max) | snapshot bytes | fan-out spread mean / max ms (versions) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        rec = recordings[r["task"]]
        lines.append(
            f"| {r['task']} | {r['clients']} | {r['rate']:,.0f} | {r['rate'] / rec.rate():.1f}x | {r['cpu_per_10k']:.2f} "
            f"| {rec.cpu_per_10k() / r['cpu_per_10k']:.1f}x "
            f"| {r['cpu_share']:.2f} | {r['rss_start']:.0f} -> {r['rss_end']:.0f} ({r['rss_max']:.0f}) "
            f"| {r['snapshot_bytes']:,} | {r['fanout_mean_ms']:.1f} / {r['fanout_max_ms']:.1f} ({r['versions']}) |"
        )
    lines += ["", "## Where the trainer's training thread spent its time (timers.json, busiest blocks)", ""]
    for r in rows:
        timers = ", ".join(f"{name} {total:.1f} s ({count})" for name, total, count in r["timers"])
        lines.append(f"- {r['task']}, {r['clients']} gateways: {timers or 'n/a'}")
        if r["errors"]:
            lines.append(f"  - client errors: {r['errors']}")
    if baseline:
        lines += [
            "",
            f"## Side by side: the trainer of `{baseline_commit}` (before) and this tree's (after)",
            "",
            "Each pair measured one after the other with the same recording and clients.",
            "",
            "| task | gateways | trainer CPU s per 10k steps, before -> after | x one gateway per CPU second, "
            "before -> after | agent steps/s accepted, before -> after |",
            "|---|---:|---|---|---|",
        ]
        for before, after in zip(baseline, rows):
            rec = recordings[after["task"]]
            lines.append(
                f"| {after['task']} | {after['clients']} | {before['cpu_per_10k']:.2f} -> {after['cpu_per_10k']:.2f} "
                f"| {rec.cpu_per_10k() / before['cpu_per_10k']:.1f}x -> {rec.cpu_per_10k() / after['cpu_per_10k']:.1f}x "
                f"| {before['rate']:,.0f} -> {after['rate']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="bench_ingestion", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per run")
    parser.add_argument("--record-seconds", type=float, default=15.0, help="recording per task")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated numbers of synthetic gateways")
    parser.add_argument("--tasks", default="3dball,gridworld", help="comma-separated tasks: " + ", ".join(TASKS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--baseline-commit", default="", help="also run this commit's trainer beside each run (before/after)")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown tasks {unknown}")
    counts = [int(c) for c in args.clients.split(",") if c]
    recordings = {task: record(task, args.record_seconds) for task in tasks}
    rows, baseline = [], []
    with tempfile.TemporaryDirectory(prefix="bench-ingestion-") as tmp:
        tree = baseline_tree(args.baseline_commit, Path(tmp)) if args.baseline_commit else None
        for task in tasks:
            for count in counts:
                for label, which, out in (("baseline", tree, baseline), ("this tree", None, rows)):
                    if label == "baseline" and tree is None:
                        continue
                    folder = Path(tmp) / f"{task}-{count}-{label.replace(' ', '-')}"
                    folder.mkdir()
                    row = ingest(recordings[task], count, args.seconds, folder, which)
                    _log.info("ingestion", trainer=label, **{k: v for k, v in row.items() if k != "timers"})
                    out.append(row)
    write_results(args.output, _render(argv, recordings, rows, args.seconds, baseline or None, args.baseline_commit))
    return 1 if any(r["errors"] or not r["steps"] for r in rows + baseline) else 0


if __name__ == "__main__":
    sys.exit(main())
