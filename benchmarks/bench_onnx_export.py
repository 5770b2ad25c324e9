"""How long exporting one policy snapshot to ONNX takes, so that it never stalls training.

The trainer exports at every checkpoint and at the end of a run. This measures
``export_policy`` (graph build, serialization and the atomic file write) for a
3DBall-sized policy (one 8-float vector observation, 2 continuous actions, 2x128 MLP;
PPO and SAC heads) and a visual one (84x84x3 camera plus a vector, 3 discrete
branches, simple encoder, 2x128 MLP), plus what a consumer pays: creating an
onnxruntime session and one batch-1 decision.

``make bench BENCH=bench_onnx_export`` writes ``benchmarks/results/bench_onnx_export.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks import report
from common import architecture as arch_mod, specs
from common.logging import configure_logging, get_logger
from trainer_server.onnx_export import OPSET, export_policy, export_policy_bytes

RESULTS = Path(__file__).parent / "results" / "bench_onnx_export.md"


def _architecture(observations, continuous=0, branches=(), distribution="gaussian", hidden=128, layers=2):
    spec = specs.BehaviorSpec(
        name="Bench?team=0",
        observations=tuple(specs.ObservationSpec(name=f"obs{i}", shape=s) for i, s in enumerate(observations)),
        action_spec=specs.ActionSpec(continuous_size=continuous, discrete_branches=tuple(branches)),
    )
    return arch_mod.PolicyArchitecture(
        behavior_spec=spec,
        hidden_units=hidden,
        num_layers=layers,
        normalize=True,
        vis_encode_type="simple",
        continuous_distribution=distribution,
    )


def _params(arch: arch_mod.PolicyArchitecture) -> dict[str, np.ndarray]:
    """Random parameters with the reference's names and shapes (values do not affect timing)."""
    rng = np.random.default_rng(0)
    shapes = arch_mod.parameter_shapes(arch)
    params = {name: rng.normal(0.0, 0.1, shape).astype(np.float32) for name, shape in shapes.items()}
    for name, shape in shapes.items():
        if name.startswith("normalizer/var/"):
            params[name] = np.ones(shape, np.float32)
    return params


CASES = {
    "3DBall PPO (8 obs, 2 cont, 2x128)": _architecture([(8,)], continuous=2),
    "3DBall SAC (8 obs, 2 cont, 2x128)": _architecture([(8,)], continuous=2, distribution="tanh_gaussian"),
    "visual (84x84x3 + 4 obs, 3x3 discrete, 2x128)": _architecture([(3, 84, 84), (4,)], branches=(3, 3, 3)),
}


def _time(fn, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    log = get_logger("bench_onnx_export")
    parser = argparse.ArgumentParser(prog="bench_onnx_export", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="exports timed per case (default 30)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.repeats < 1:
        log.error("--repeats must be at least 1", repeats=args.repeats)
        return 2

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, arch in CASES.items():
            params = _params(arch)
            path = Path(tmp) / "Bench.onnx"
            export_policy(arch, params, path)  # warm-up (imports, allocator)
            export = _time(lambda: export_policy(arch, params, path), args.repeats)
            build = _time(lambda: export_policy_bytes(arch, params), args.repeats)
            model = path.read_bytes()
            load = _time(lambda: ort.InferenceSession(model, providers=["CPUExecutionProvider"]), 5)
            sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            feed = {
                i.name: np.ones([1 if isinstance(d, str) else d for d in i.shape], np.float32)
                for i in sess.get_inputs()
            }
            sess.run(None, feed)
            act = _time(lambda: sess.run(None, feed), 200)
            n_params = sum(v.size for v in params.values())
            row = {
                "case": label,
                "params": n_params,
                "size_kib": len(model) / 1024,
                "export_median_ms": 1e3 * statistics.median(export),
                "export_max_ms": 1e3 * max(export),
                "bytes_median_ms": 1e3 * statistics.median(build),
                "load_median_ms": 1e3 * statistics.median(load),
                "act_median_us": 1e6 * statistics.median(act),
            }
            rows.append(row)
            log.info("measured", **row)

    lines = [
        "# bench_onnx_export",
        "",
        "Time to export one policy snapshot as an ML-Agents-contract ONNX model "
        f"(opset {OPSET}), and what a consumer pays to load it and take one decision.",
        "",
        "Command: `make bench BENCH=bench_onnx_export` "
        f"(`python -m benchmarks.run bench_onnx_export`), {args.repeats} exports per case.",
        f"Machine: {report.cpu_name()} ({os.cpu_count()} cores visible), Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}; CPU only (export never touches the accelerator).",
        "",
        "| policy | parameters | model size | `export_policy` median (max) | `export_policy_bytes` median "
        "| onnxruntime session load | one decision, batch 1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['params']:,} | {r['size_kib']:.0f} KiB | {r['export_median_ms']:.2f} ms "
            f"({r['export_max_ms']:.2f} ms) | {r['bytes_median_ms']:.2f} ms | {r['load_median_ms']:.2f} ms "
            f"| {r['act_median_us']:.0f} µs |"
        )
    lines += [
        "",
        "`export_policy` includes the atomic write (temporary file + rename) to local disk. "
        "The trainer exports once per checkpoint (`checkpoint_interval`, default 500k steps) and at the "
        "end of a run; even exporting after every update (e.g. to ship the model with each snapshot) "
        "costs milliseconds, negligible next to one PPO update.",
        "",
    ]
    report.write_results(args.output, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
