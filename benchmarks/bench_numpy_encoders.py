"""The gateway's numpy acting cost per agent for the resnet and match3 encoders, before and
after the im2col / max-pool rewrite of ``gateway.actor.numpy_policy``, side by side.

Why: the gateway acts on its CPU with ``NumpyPolicy``; resnet and match3 apply several
convolutions at the image's full resolution, and their first numpy implementation built the
im2col columns by transposing a sliding-window view (a gather of single floats) and
max-pooled by reducing over window axes, and convolved every agent's image at once (12
84x84 images overflow the CPU's cache). This measures ``NumpyPolicy.act`` at the stand-in's
image sizes (24x24 Visual3DBall-like, 84x84 gridworld84-like; match3 only at 24x24, see
``bench_ppo_update.encoder_cases``) with the current functions and with the former ones
(``_former_conv2d_valid``, ``_former_max_pool``, no agent chunks, patched in for the "before" column), the
two interleaved in one run (the machine's load hits both alike); figures are the minimum
over rounds. Both give the same actions (checked to 1e-5 before timing).

``python -m benchmarks.run bench_numpy_encoders`` writes
``benchmarks/results/bench_numpy_encoders.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from benchmarks import report
from common.architecture import PolicyArchitecture
from common.logging import configure_logging
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.actor import numpy_policy

RESULTS = Path(__file__).parent / "results" / "bench_numpy_encoders.md"
CASES = (("resnet", 24), ("resnet", 84), ("match3", 24))


def _former_conv2d_valid(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """The first implementation: columns from a transposed sliding-window view."""
    kh, kw, c, o = kernel.shape
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    n, oh, ow = windows.shape[:3]
    cols = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, kh * kw * c)
    return (cols @ kernel.reshape(kh * kw * c, o) + bias).reshape(n, oh, ow, o)


def _former_max_pool(x: np.ndarray) -> np.ndarray:
    """The first implementation: a reduction over the window axes of a sliding-window view."""
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))


@contextmanager
def _former() -> Iterator[None]:
    """The former functions patched in, and no chunking of agents (all convolved at once)."""
    current = numpy_policy.conv2d_valid, numpy_policy._max_pool_3x3_s2, numpy_policy._CONV_CHUNK_FLOATS
    numpy_policy.conv2d_valid, numpy_policy._max_pool_3x3_s2 = _former_conv2d_valid, _former_max_pool
    numpy_policy._CONV_CHUNK_FLOATS = 1 << 62
    try:
        yield
    finally:
        numpy_policy.conv2d_valid, numpy_policy._max_pool_3x3_s2, numpy_policy._CONV_CHUNK_FLOATS = current


def _policy(encoder: str, side: int) -> numpy_policy.NumpyPolicy:
    import jax

    from trainer_server.learning import networks

    spec = BehaviorSpec("Visual?team=0", (ObservationSpec("CameraSensor", (3, side, side)),), ActionSpec(continuous_size=2))
    arch = PolicyArchitecture(spec, hidden_units=128, num_layers=2, normalize=False, vis_encode_type=encoder)
    params = {k: np.asarray(v) for k, v in networks.init_actor(jax.random.key(0), arch).items()}
    return numpy_policy.NumpyPolicy(arch, params)


def _time(policy: numpy_policy.NumpyPolicy, obs: list[np.ndarray], calls: int) -> float:
    """Seconds per ``act`` call (deterministic: only the network is timed)."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(calls):
        policy.act(obs, None, rng, deterministic=True)
    return (time.perf_counter() - start) / calls


def measure(encoder: str, side: int, agents: int, calls: int, rounds: int) -> dict[str, float]:
    """us per agent before and after, minimum over ``rounds`` interleaved rounds."""
    policy = _policy(encoder, side)
    obs = [np.random.default_rng(1).random((agents, 3, side, side), dtype=np.float32)]
    after = policy.distribution(obs, None)
    with _former():
        before = policy.distribution(obs, None)
    for key in after:
        if after[key] is not None:
            np.testing.assert_allclose(after[key], before[key], atol=1e-5, err_msg=key)
    old, new = [], []
    for _ in range(rounds):
        with _former():
            old.append(_time(policy, obs, calls))
        new.append(_time(policy, obs, calls))
    return {"before_us": 1e6 * min(old) / agents, "after_us": 1e6 * min(new) / agents}


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="bench_numpy_encoders", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5, help="act calls per timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved before/after rounds (minimum kept)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for encoder, side in CASES:
        for agents in (1, 12):
            rows.append((encoder, side, agents, measure(encoder, side, agents, args.calls, args.rounds)))
    lines = [
        "# bench_numpy_encoders",
        "",
        "The gateway's numpy acting cost (`NumpyPolicy.act`, deterministic, 2x128 body, 2 continuous "
        "actions, one RGB camera) per agent, with the former convolution / max-pool (transposed "
        "sliding-window view; reduction over window axes; all agents at once) and the current ones (strided "
        "slices side by side on the channel axis; maximum of nine strided slices; agents in cache-sized chunks), interleaved in one run, "
        f"minimum of {args.rounds} rounds of {args.calls} calls. Same actions to 1e-5. On a machine shared "
        "with other jobs single figures vary by tens of percent between runs; match3's cost is mostly its "
        "dense layer (20 * 20 * 144 inputs x 128 units, 29 MB of weights read per call), which neither "
        "version changes.",
        "",
        f"Command: `python -m benchmarks.run bench_numpy_encoders` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Machine: {report.cpu_name()} ({os.cpu_count()} cores visible, shared with other jobs), "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}.",
        "",
        "| encoder | image | agents | before (µs/agent) | after (µs/agent) | speed-up |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for encoder, side, agents, r in rows:
        lines.append(
            f"| {encoder} | {side}x{side} | {agents} | {r['before_us']:,.0f} | {r['after_us']:,.0f} "
            f"| {r['before_us'] / r['after_us']:.2f}x |"
        )
    lines.append("")
    report.write_results(args.output, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
