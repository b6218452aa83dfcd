"""The floor guard's time per grasp env step (perf_counter around FloorGuard.guarded_target),
the shipped grasp policy acting for 8 episodes, in the checkout given (a worktree of another
commit to compare with):

    OMP_NUM_THREADS=1 python guard_time.py REPO_ROOT
"""

import sys
import time

ROOT = sys.argv[1]
sys.path[:0] = [ROOT, ROOT + "/deploy"]

from iiwa_deploy import floor_guard, prepare_policy  # noqa: E402

from iiwa_rl.envs.tasks.grasp import IiwaGraspEnv  # noqa: E402


def main() -> None:
    prepared = prepare_policy(ROOT + "/assets/policies/grasp/policy.onnx")
    env = IiwaGraspEnv(**dict(prepared.policy.contract.raw["env_kwargs"]))
    guard_s = 0.0
    guarded = floor_guard.FloorGuard.guarded_target

    def timed(*args):
        nonlocal guard_s
        start = time.perf_counter()
        try:
            return guarded(*args)
        finally:
            guard_s += time.perf_counter() - start

    floor_guard.FloorGuard.guarded_target = timed
    steps, successes, start = 0, 0, time.perf_counter()
    for episode in range(8):
        observation, _ = env.reset(seed=episode)
        done = False
        while not done:
            action = prepared.policy.act(observation).copy()
            observation, _, terminated, truncated, info = env.step(action)
            steps += 1
            done = terminated or truncated
        successes += bool(info.get("is_success"))
    total_s = time.perf_counter() - start
    print(
        f"{ROOT}: guard {guard_s / steps * 1e6:.0f} us/step of {total_s / steps * 1e6:.0f}; "
        f"successes {successes}/8"
    )


if __name__ == "__main__":
    main()
