"""The batched subprocess vector env behaves exactly like Gymnasium's SyncVectorEnv."""

import numpy as np

import iiwa_rl.envs  # noqa: F401
from iiwa_rl.envs import make_vector_env
from iiwa_rl.envs.vector import stack_infos


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
