"""The Stable-Baselines3 PPO reference, built from one of our training configs: the same
environment, vector size, networks, hyperparameters and normalisation, so a comparison
differs only in the library. Shared by the benchmarks (never imported by iiwa_rl)."""

from __future__ import annotations

import torch

ACTIVATIONS = {
    "tanh": torch.nn.Tanh,
    "relu": torch.nn.ReLU,
    "elu": torch.nn.ELU,
    "silu": torch.nn.SiLU,
}


def sb3_ppo_from_config(config, seed: int, vec: str = "dummy"):
    """(SB3 PPO model, its VecNormalize env) mirroring `config` (a TrainConfig with ppo)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    ppo, env_cfg = config.ppo, config.env
    venv = make_vec_env(
        # "module:id": SubprocVecEnv's fresh workers import the module that registers the id.
        f"iiwa_rl.envs:{env_cfg.id}" if env_cfg.id.startswith("Iiwa") else env_cfg.id,
        n_envs=env_cfg.num_envs,
        seed=seed,
        env_kwargs=env_cfg.kwargs,
        vec_env_cls=SubprocVecEnv if vec == "subproc" else DummyVecEnv,
        monitor_kwargs={"info_keywords": ("is_success",)},
    )
    venv = VecNormalize(
        venv,
        norm_obs=config.normalize.observations,
        norm_reward=config.normalize.rewards,
        clip_obs=config.normalize.clip,
        clip_reward=config.normalize.clip,
        gamma=ppo.gamma,
    )
    if ppo.lr_schedule == "linear":
        learning_rate = lambda remaining: ppo.learning_rate * remaining  # noqa: E731
    else:
        learning_rate = ppo.learning_rate
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=ppo.rollout_steps,
        batch_size=ppo.minibatch_size,
        n_epochs=ppo.epochs,
        learning_rate=learning_rate,
        gamma=ppo.gamma,
        gae_lambda=ppo.gae_lambda,
        clip_range=ppo.clip_range,
        ent_coef=ppo.entropy_coef,
        vf_coef=ppo.value_coef,
        max_grad_norm=ppo.max_grad_norm,
        target_kl=ppo.target_kl,
        policy_kwargs={
            "net_arch": {
                "pi": list(config.policy.hidden_sizes),
                "vf": list(config.critic.hidden_sizes),
            },
            "activation_fn": ACTIVATIONS[config.policy.activation],
            "log_std_init": config.policy.log_std.init,
            "ortho_init": config.policy.init == "orthogonal",
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    return model, venv
