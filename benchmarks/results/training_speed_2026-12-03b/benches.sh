#!/bin/bash
# Issue 19, tenth part: main with numpy acting, one bench after the other (nothing else running).
set -u
cd /work/main
source .venv/bin/activate
export OMP_NUM_THREADS=1 PYTHONPATH=.:deploy
OUT=benchmarks/results/training_speed_2026-12-03b
log() { echo "=== $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; }
log "A/B training overhead: base 271faea vs main"
for i in 1 2; do
  for w in /tmp/s10/base /work/main; do
    log "overhead $w round $i"
    (cd $w && PYTHONPATH=.:deploy python benchmarks/bench_training_overhead.py --steps 61440 --rounds 1 2>&1 | grep -E 'round|PPO|all rounds')
  done
done
log "bench_training_overhead main --steps 60000 --rounds 2"
python benchmarks/bench_training_overhead.py --steps 60000 --rounds 2 --json $OUT/bench_training_overhead.json 2>&1 | grep -v '^eval'
log "bench_env --steps 2000"
python benchmarks/bench_env.py --steps 2000 --json $OUT/bench_env.json 2>&1 | tail -30
log "bench_ppo_vs_sb3"
python benchmarks/bench_ppo_vs_sb3.py --steps 300000 --seeds 0 --sb3-vec dummy --out $OUT/ppo_vs_sb3 2>&1 | tail -20
log "time to success reach"
python benchmarks/bench_time_to_success.py --budget-s 45 --snapshot-every 10240 --episodes 100 --json $OUT/time_to_success_reach.json --seeds 0 1 2 2>&1 | grep -v '^eval @'
log "time to success grasp"
python benchmarks/bench_time_to_success.py --config configs/grasp_ppo.yaml --budget-s 240 --snapshot-every 65536 --json $OUT/time_to_success_grasp.json --seeds 0 1 2>&1 | grep -v '^eval @'
log done
