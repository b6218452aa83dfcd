# A throwaway measurement of the tenth part (RESULTS): each piece of the main process timed
# in place during a PPO training. Run from the repository root with PYTHONPATH=.:deploy:
# python time_train2.py STEPS CONFIG [override ...]
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

T = defaultdict(float)
C = defaultdict(int)


def timed(obj, name, key):
    f = getattr(obj, name)

    def w(*a, **k):
        t0 = time.perf_counter()
        r = f(*a, **k)
        T[key] += time.perf_counter() - t0
        C[key] += 1
        return r

    setattr(obj, name, w)


def main():
    from iiwa_rl.config import load_config
    from iiwa_rl.train import Trainer

    steps = int(sys.argv[1])
    cfg = sys.argv[2]
    extra = sys.argv[3:]
    run_dir = Path(tempfile.mkdtemp())
    shutil.rmtree(run_dir)
    config = load_config(
        cfg,
        [
            f"train.total_steps={steps}",
            "train.max_wall_seconds=null",
            f"train.eval_every_steps={steps}",
            f"train.checkpoint_every_steps={steps}",
            "train.eval_episodes=1",
            "train.progress=quiet",
            "device=cpu",
            *extra,
        ],
    )
    tr = Trainer(config, run_dir)
    col = tr.collector
    timed(tr.algorithm, "act", "act")
    timed(tr.algorithm, "update", "update")
    timed(tr.algorithm, "observe", "observe")
    timed(tr.statistics, "record", "stats")
    timed(col, "next_step", "next_step")
    envs = getattr(col, "envs", None)
    if envs is not None:
        timed(envs, "step", "envs.step")
        timed(envs, "_run", "envs._run")
        timed(envs._local, "step", "local.step")
        import iiwa_rl.envs.vector as V

        f = V.stack_infos

        def si(infos):
            t0 = time.perf_counter()
            r = f(infos)
            T["stack_infos"] += time.perf_counter() - t0
            C["stack_infos"] += 1
            return r

        V.stack_infos = si
        for cls, key in (
            (type(tr.reward_scaler), "reward_scaler"),
            (type(tr.obs_normalizer), "obs_norm"),
            (type(tr.flatten), "flatten"),
        ):
            timed(cls, "__call__", key)

    timed(tr.obs_normalizer, "__call__", "norm") if False else None
    t0 = time.perf_counter()
    tr.train()
    W = time.perf_counter() - t0
    print(f"wall {W:.2f}s for {steps} steps: {steps / W:.0f} steps/s (incl start/eval)")
    for k in T:
        print(
            f"{k:12s} {T[k]:7.3f} s  {C[k]:6d} calls  {T[k] / C[k] * 1e6:8.1f} us/call  {T[k] / W * 100:5.1f} %"
        )


if __name__ == "__main__":
    main()
