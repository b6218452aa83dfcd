# A throwaway measurement of the tenth part (RESULTS): acting in torch and in numpy, after
# 8 env steps and in a tight loop. Run from the repository root with PYTHONPATH=.:deploy.
import shutil
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import iiwa_rl.envs  # noqa: F401
from iiwa_rl.config import load_config
from iiwa_rl.train import Trainer

torch.set_num_threads(1)


def layers_np(seq, head):
    out = []
    for m in list(seq) + [head]:
        if isinstance(m, torch.nn.Linear):
            out.append((m.weight.detach().numpy().T, m.bias.detach().numpy()))
    return out


def main():
    run_dir = Path(tempfile.mkdtemp())
    shutil.rmtree(run_dir)
    config = load_config(
        "configs/reach_ppo.yaml",
        ["env.vector_mode=sync", "env.num_envs=16", "device=cpu", "train.eval_in_background=false"],
    )
    tr = Trainer(config, run_dir)
    algo = tr.algorithm
    A = algo.acting_actor
    Cr = algo.acting_critic
    al = layers_np(A.trunk, A.mean_head)
    cl = layers_np(Cr.trunk, Cr.head)
    log_std_raw = A.log_std_raw.detach().numpy()
    lo, hi = A.log_std_min, A.log_std_max
    rng = np.random.default_rng(0)

    def mlp(x, ls):
        for i, (w, b) in enumerate(ls):
            x = x @ w
            x += b
            if i < len(ls) - 1:
                np.tanh(x, out=x)
        return x

    def act_np(obs):
        mean = mlp(obs, al)
        log_std = lo + 0.5 * (hi - lo) * (np.tanh(log_std_raw) + 1)
        std = np.exp(log_std)
        z = rng.standard_normal(mean.shape, dtype=np.float32)
        action = mean + z * std
        logp = (-0.5 * z * z - log_std - 0.9189385).sum(-1)
        value = mlp(obs, cl)[:, 0]
        return np.clip(action, -1, 1), action, {"log_prob": logp, "value": value}

    obs = np.random.randn(16, tr.collector.single_observation_space.shape[0]).astype(np.float32)
    m_t = A.forward(torch.from_numpy(obs))[0].detach().numpy()
    m_n = mlp(obs, al)
    print("max diff mean", np.abs(m_t - m_n).max())
    envs = [gym.make("IiwaReach-v0").unwrapped for _ in range(8)]
    for i, e in enumerate(envs):
        e.reset(seed=i)
    for name, f in [("torch", algo.act), ("numpy", act_np)]:
        ta = 0
        n = 800
        for k in range(n + 50):
            for e in envs:
                _, _, te, tru, _ = e.step(np.zeros(7, np.float32) + 0.1 * np.sin(k))
                if te or tru:
                    e.reset()
            t1 = time.perf_counter()
            f(obs)
            t2 = time.perf_counter()
            if k >= 50:
                ta += t2 - t1
        t0 = time.perf_counter()
        for _ in range(2000):
            f(obs)
        print(
            f"{name}: cold {ta / n * 1e6:.1f} us, hot {(time.perf_counter() - t0) / 2000 * 1e6:.1f} us"
        )
    tr.collector.close()


if __name__ == "__main__":
    main()
