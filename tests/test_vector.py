"""The batched subprocess vector env behaves exactly like Gymnasium's SyncVectorEnv and
like single envs stepped on their own, in every layout of envs over processes; a PPO
training computes the same weights in every vector mode and layout."""

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import iiwa_rl.envs  # noqa: F401
from iiwa_rl.config import load_config
from iiwa_rl.envs import make_vector_env
from iiwa_rl.envs.vector import slice_bounds, stack_infos
from iiwa_rl.train import Trainer

REACH = Path(__file__).resolve().parents[1] / "configs" / "reach_ppo.yaml"


def _assert_infos_equal(expected: dict, actual: dict) -> None:
    assert set(expected) == set(actual)
    for key, value in expected.items():
        if key == "final_obs":
            for a, b in zip(value, actual[key]):
                assert (a is None and b is None) or np.allclose(a, b)
        elif isinstance(value, dict):
            _assert_infos_equal(value, actual[key])
        else:
            np.testing.assert_allclose(np.asarray(value, float), np.asarray(actual[key], float))


def test_batched_matches_sync_through_episode_ends():
    kwargs = {"episode_steps": 3}
    sync = make_vector_env("IiwaReach-v0", 3, kwargs, "sync")
    batched = make_vector_env("IiwaReach-v0", 3, kwargs, "batched", workers=2)
    try:
        obs_sync, info_sync = sync.reset(seed=4)
        obs_batched, info_batched = batched.reset(seed=4)
        np.testing.assert_allclose(obs_sync, obs_batched)
        _assert_infos_equal(info_sync, info_batched)
        rng = np.random.default_rng(0)
        ended = False
        for _ in range(7):  # two episode ends with SAME_STEP autoreset
            action = rng.uniform(-1, 1, (3, 7)).astype(np.float32)
            a, b = sync.step(action), batched.step(action)
            for x, y in zip(a[:4], b[:4]):
                np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float))
            _assert_infos_equal(a[4], b[4])
            ended = ended or bool(a[3].any())
        assert ended
    finally:
        sync.close()
        batched.close()


def test_stack_infos_layout():
    infos = [{"a": 1.0, "flag": True}, {"flag": False, "nested": {"x": 2}}]
    stacked = stack_infos(infos)
    np.testing.assert_array_equal(stacked["a"], [1.0, 0.0])
    np.testing.assert_array_equal(stacked["_a"], [True, False])
    np.testing.assert_array_equal(stacked["flag"], [True, False])
    np.testing.assert_array_equal(stacked["nested"]["x"], [0, 2])
    np.testing.assert_array_equal(stacked["_nested"], [False, True])


def test_slice_bounds_even_and_with_a_main_process_share():
    def sizes(*args):
        return [part.stop - part.start for part in slice_bounds(*args)]

    assert sizes(16, 2) == [8, 8]
    assert sizes(16, 3) == [5, 6, 5]  # even shares as they always were
    assert sizes(16, 2, 0.875) == [7, 9]
    assert sizes(32, 2, 0.875) == [14, 18]
    assert sizes(2, 2, 0.875) == [1, 1]
    assert sizes(16, 3, 0.75) == [4, 6, 6]
    assert sizes(5, 2, 0.0) == [0, 5]
    assert sizes(4, 1, 0.5) == [4]  # the main process is the only one
    parts = slice_bounds(16, 3, 0.75)
    assert [p.start for p in parts] == [0, 4, 10] and parts[-1].stop == 16
    with pytest.raises(ValueError, match="main_process_share must be in"):
        slice_bounds(16, 2, 1.5)


@pytest.mark.parametrize(
    "main_process_share, handover_spin_s", [(1.0, None), (0.75, 0.0), (0.0, None)]
)
def test_batched_rollout_equals_single_env_rollouts(main_process_share, handover_spin_s):
    """Bit for bit: env i of the batched vector env, whichever process steps it and
    whether the processes poll or block for each other's messages, is a single env seeded
    s + i given the same actions, through SAME_STEP autoresets."""
    kwargs, count, seed = {"episode_steps": 3}, 3, 11
    batched = make_vector_env(
        "IiwaReach-v0",
        count,
        kwargs,
        "batched",
        workers=2,
        main_process_share=main_process_share,
        handover_spin_s=handover_spin_s,
    )
    singles = [gym.make("IiwaReach-v0", **kwargs) for _ in range(count)]
    try:
        observations, _ = batched.reset(seed=seed)
        for i, env in enumerate(singles):
            np.testing.assert_array_equal(observations[i], env.reset(seed=seed + i)[0])
        rng = np.random.default_rng(1)
        ended = 0
        for _ in range(7):
            actions = rng.uniform(-1, 1, (count, 7)).astype(np.float32)
            observations, rewards, terminated, truncated, infos = batched.step(actions)
            for i, env in enumerate(singles):
                observation, reward, term, trunc, _ = env.step(actions[i])
                assert (reward, term, trunc) == (rewards[i], terminated[i], truncated[i])
                if term or trunc:
                    np.testing.assert_array_equal(infos["final_obs"][i], observation)
                    observation, _ = env.reset()
                    ended += 1
                np.testing.assert_array_equal(observations[i], observation)
        assert ended >= count  # every env went through an autoreset
    finally:
        batched.close()
        for env in singles:
            env.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_waiting_worker_polls_for_handover_spin_s_then_blocks():
    """Between two commands a subprocess polls for `handover_spin_s`, then blocks: waiting
    through a long pause (an update) costs it that much CPU, not the pause. A worker that
    blocked at once, or polled on, would fail one of the two bounds."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_training_overhead import cpu_seconds  # this process's, then each worker's

    pause_s = 1.5
    for spin_s, low, high in [(0.0, 0.0, 0.15), (0.5, 0.35, 0.9)]:
        envs = make_vector_env("IiwaReach-v0", 2, {}, "batched", workers=2, handover_spin_s=spin_s)
        try:
            envs.reset(seed=0)
            envs.step(np.zeros((2, 7), dtype=np.float32))
            before = cpu_seconds(envs)[1]
            time.sleep(pause_s)
            waited = cpu_seconds(envs)[1] - before
        finally:
            envs.close()
        assert low <= waited <= high, (spin_s, waited)


def test_a_negative_handover_spin_is_refused():
    with pytest.raises(ValueError, match="handover_spin_s must be >= 0, got -0.1"):
        make_vector_env("IiwaReach-v0", 2, {}, "batched", workers=2, handover_spin_s=-0.1)


def _trained_weights(tmp_path, name: str, overrides: list[str]) -> list[torch.Tensor]:
    config = load_config(
        REACH,
        [
            "env.num_envs=4",
            "env.kwargs.episode_steps=10",  # episode ends inside the rollouts
            "ppo.rollout_steps=16",
            "ppo.minibatch_size=32",
            "ppo.epochs=2",
            "train.total_steps=192",
            "train.eval_every_steps=1000000000",
            "train.checkpoint_every_steps=1000000000",
            "train.eval_episodes=1",
            "train.progress=quiet",
            "train.max_wall_seconds=null",
            "device=cpu",
            *overrides,
        ],
    )
    trainer = Trainer(config, tmp_path / name)
    trainer.train()
    networks = trainer.algorithm.state_dict()
    return [*networks["actor"].values(), *networks["critic"].values()]


def test_ppo_training_is_the_same_in_every_vector_layout(tmp_path):
    """Which process steps which env, and where acting happens meanwhile, changes no
    number: a run is reproducible from its config and seed whatever its layout."""
    reference = _trained_weights(tmp_path, "sync", ["env.vector_mode=sync"])
    for name, layout in {
        "even": ["env.vector_mode=batched", "env.workers=2", "env.main_process_share=1"],
        "main1": ["env.vector_mode=batched", "env.workers=2", "env.main_process_share=0.5"],
    }.items():
        weights = _trained_weights(tmp_path, name, layout)
        assert all(torch.equal(a, b) for a, b in zip(reference, weights)), name
