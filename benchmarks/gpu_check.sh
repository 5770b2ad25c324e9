#!/usr/bin/env bash
# The GPU check of issue 18, in one script (under 8 minutes on one GPU): the set-up's CUDA
# install, the PPO and SAC update benchmarks at the 3DBall and a visual size on the GPU, and a
# short `make run` with the trainer on the GPU. Figures go to benchmarks/results/gpu_*.md,
# beside the CPU ones. Run from the repository root: `bash benchmarks/gpu_check.sh`.
# Not yet run: no GPU was lent to the session that wrote it (docs/SCALING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=benchmarks/results
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "NVIDIA driver"
nvidia-smi -L
step "make setup (auto: the CUDA build of JAX where nvidia-smi lists a GPU)"
timeout 240 make setup
.venv/bin/python -c 'import jax, sys; d = jax.devices(); print("JAX", jax.__version__, d); sys.exit(0 if d[0].platform == "gpu" else "JAX sees no GPU: the CUDA build did not load")'

step "bench_ppo_update and bench_sac_update (3DBall sizes) on the GPU"
timeout 120 .venv/bin/python -m benchmarks.bench_ppo_update --updates 3 --output "$RESULTS/gpu_bench_ppo_update.md"
timeout 90 .venv/bin/python -m benchmarks.bench_sac_update --steps 2000 --output "$RESULTS/gpu_bench_sac_update.md"
step "PPO and SAC updates at the 3DBall and a visual (84x84x3) size, one GPU and all of them"
timeout 120 .venv/bin/python -m benchmarks.gpu_check --output "$RESULTS/gpu_check.md"

step "a short make run with the trainer on the GPU (stopped after 60 s if not solved before)"
rm -rf results/gpu-check
set +e
timeout --signal=INT 60 make run RUN_ID=gpu-check TRAINER_ARGS="--torch-device cuda --force" 2>&1 | tee /tmp/gpu-check-run.log
set -e
grep -m1 '"learner devices"\|learner devices' /tmp/gpu-check-run.log
grep 'Mean Reward' /tmp/gpu-check-run.log | tail -3 || true
step "done: $RESULTS/gpu_bench_ppo_update.md $RESULTS/gpu_bench_sac_update.md $RESULTS/gpu_check.md"
