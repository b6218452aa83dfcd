#!/usr/bin/env bash
# The main job, from a fresh clone: set up, train the default reach policy with PPO,
# evaluate it on 100 deterministic episodes, export it to ONNX, and run it in the
# real-time control loop against the simulated arm.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
RUN="${RUN_DIR:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}"

echo "== train (configs/reach_ppo.yaml) -> $RUN"
iiwa-rl train configs/reach_ppo.yaml --run-dir "$RUN"
echo "== evaluate: 100 deterministic episodes"
iiwa-rl eval "$RUN" --episodes 100
echo "== export to ONNX (parity-checked against torch)"
iiwa-rl export "$RUN" -o "$RUN/policy.onnx"
echo "== deploy: one episode (75 policy steps, 3 s) in the real-time control loop against the simulator"
iiwa-rl deploy "$RUN/policy.onnx" --robot sim
echo "== done: $RUN (learning curve: $RUN/learning_curve.png)"
