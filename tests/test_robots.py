"""The robot is a component: a second arm is one file (a module that registers its
`RobotDescription`) plus its robot YAML, and the reach env steps and trains with it without
a change to iiwa_rl/envs. The second arm here is the iiwa's URDF with every joint and link
renamed, so that the physics can be compared number for number with the iiwa's."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from iiwa_rl.config import load_config
from iiwa_rl.envs.tasks.grasp import IiwaGraspEnv
from iiwa_rl.envs.tasks.reach import IiwaReachEnv
from iiwa_rl.schema import ConfigError
from iiwa_rl.sim import IIWA14, BulletSim, robot_description, robot_names
from iiwa_rl.sim.client import asset_path
from iiwa_rl.train import Trainer

REPO = Path(__file__).resolve().parents[1]
SHIPPED_ROBOT_YAML = REPO / "deploy" / "iiwa_deploy" / "robot_iiwa14.yaml"
MODULE = "second_arm_for_tests"
ROBOT = f"{MODULE}:renamed_iiwa"


def _renamed(text: str) -> str:
    return text.replace("iiwa_joint_", "arm_joint_").replace("iiwa_link_", "arm_link_")


@pytest.fixture(scope="module")
def second_arm(tmp_path_factory):
    """A module that registers `renamed_iiwa` (its URDF and robot YAML beside it), importable
    as `second_arm_for_tests`."""
    folder = tmp_path_factory.mktemp("second_arm")
    urdf = folder / "renamed_iiwa.urdf"
    urdf.write_text(_renamed(asset_path("urdf", "iiwa14.urdf").read_text()))
    robot_yaml = folder / "robot_renamed_iiwa.yaml"
    config = yaml.safe_load(SHIPPED_ROBOT_YAML.read_text())
    config["name"] = "renamed_iiwa_for_tests"
    config["joint_names"] = [_renamed(name) for name in config["joint_names"]]
    robot_yaml.write_text(yaml.safe_dump(config))
    (folder / f"{MODULE}.py").write_text(
        textwrap.dedent(
            f"""
            from iiwa_rl.sim import RobotDescription, register_robot

            RENAMED_IIWA = register_robot(
                RobotDescription(
                    name="renamed_iiwa",
                    urdf={str(urdf)!r},
                    joint_names=tuple(f"arm_joint_{{axis}}" for axis in range(1, 8)),
                    last_link="arm_link_7",
                    tcp_joints=("arm_joint_flange",),
                    home_joint_positions={IIWA14.home_joint_positions!r},
                    robot_config={str(robot_yaml)!r},
                )
            )
            """
        )
    )
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))


def _rollout(env, steps: int = 15, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(7)
    observation, _ = env.reset(seed=seed)
    rows = [observation]
    for _ in range(steps):
        observation, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        rows.append(observation)
    return np.array(rows)


def test_the_iiwa_is_a_registered_robot():
    assert "iiwa14" in robot_names()
    assert robot_description("iiwa14") is IIWA14
    env = IiwaReachEnv()
    try:
        assert env.config.robot == "iiwa14"
        assert env.robot.description is IIWA14
        assert env.describe_contract()["action"]["joint_names"] == list(IIWA14.joint_names)
    finally:
        env.close()


def test_a_second_arm_steps_like_the_iiwa_it_copies(second_arm):
    iiwa, renamed = IiwaReachEnv(), IiwaReachEnv(robot=ROBOT)
    try:
        assert renamed.robot.joint_names == tuple(f"arm_joint_{axis}" for axis in range(1, 8))
        assert renamed.robot_config.name == "renamed_iiwa_for_tests"
        contract = renamed.describe_contract()
        assert contract["action"]["joint_names"] == list(renamed.robot.joint_names)
        assert [j["name"] for j in renamed.robot.kinematic_chain()["joints"]] == list(
            renamed.robot.joint_names
        )
        # The same bodies under other names: the same physics, number for number.
        assert np.array_equal(_rollout(iiwa), _rollout(renamed))
    finally:
        iiwa.close()
        renamed.close()


def test_a_second_arm_trains_from_a_config(second_arm, tmp_path):
    config = load_config(
        REPO / "configs" / "reach_ppo.yaml",
        [
            f"env.kwargs.robot={ROBOT}",
            "env.num_envs=2",
            "ppo.rollout_steps=32",
            "ppo.minibatch_size=32",
            "ppo.epochs=1",
            "train.total_steps=128",
            "train.eval_every_steps=128",
            "train.eval_episodes=1",
            "train.checkpoint_every_steps=128",
            "train.progress=quiet",
            "train.max_wall_seconds=null",
        ],
    )
    trainer = Trainer(config, tmp_path / "run")
    summary = trainer.train()
    assert summary["step"] == 128
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["env"]["kwargs"]["robot"] == ROBOT


def test_the_robot_brings_its_home_pose_and_is_checked_against_its_yaml(second_arm, tmp_path):
    home = [0.1, 0.4, -0.1, -1.5, 0.1, 1.1, 0.2]
    env = IiwaReachEnv(robot=ROBOT, home_joint_positions=home)
    try:
        assert env.describe_contract()["action"]["home_joint_positions"] == home
    finally:
        env.close()
    # A robot YAML for another arm (the iiwa's joint names) is refused, naming both.
    with pytest.raises(ConfigError, match="robot_config: joint_names of kuka_lbr_iiwa14_r820"):
        IiwaReachEnv(robot=ROBOT, robot_config=str(SHIPPED_ROBOT_YAML))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"robot": "ur5"}, "env.kwargs: robot: unknown robot 'ur5'; registered robots: .*iiwa14"),
        ({"robot": "no_such_module:arm"}, "robot 'no_such_module:arm': cannot import"),
        ({"home_joint_positions": [0.0] * 6}, "home_joint_positions needs 7 values"),
    ],
)
def test_a_bad_robot_setting_names_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        IiwaReachEnv(**kwargs)


def test_the_grasp_refuses_an_arm_without_a_gripper(second_arm):
    with pytest.raises(ConfigError, match="env.kwargs.robot: .* has no gripper"):
        IiwaGraspEnv(robot=ROBOT)


def test_a_urdf_without_the_described_joints_is_refused(second_arm):
    # The iiwa's own description on the renamed URDF: the joints are not there.
    description = robot_description(ROBOT)
    wrong = type(description)(**{**description.__dict__, "joint_names": IIWA14.joint_names})
    sim = BulletSim()
    try:
        with pytest.raises(ValueError, match="has no joint iiwa_joint_1"):
            wrong.build(sim)
    finally:
        sim.close()


def test_a_joint_off_the_serial_chain_is_refused(second_arm):
    # The renamed arm described without its first joint: joint 2 hangs from link 1, which
    # nothing in the description moves, so the controller's kinematics would lose a link.
    description = robot_description(ROBOT)
    gapped = type(description)(
        **{
            **description.__dict__,
            "name": "gapped",
            "joint_names": description.joint_names[1:],
            "home_joint_positions": description.home_joint_positions[1:],
        }
    )
    sim = BulletSim()
    try:
        arm = gapped.build(sim)
        with pytest.raises(
            ValueError, match="arm_joint_2 hangs from arm_link_1, not from arm_link_0"
        ):
            arm.kinematic_chain()
    finally:
        sim.close()


@pytest.mark.parametrize("name, env_class", [("reach", IiwaReachEnv), ("grasp", IiwaGraspEnv)])
def test_randomised_envs_replay_their_recording(name, env_class):
    # Recorded with every randomisation term at its typical range at 01697f9 (the iiwa
    # wired into envs/base.py), re-recorded when actuator_damping_scale became the servo's
    # damping (ef5259e; the robot-component refactor left it bit for bit). The randomised arm (envs/perturbed_robot.py) reads the robot through its description
    # now. The nominal envs have their own recording (test_randomization.py); a deliberate
    # change to the randomisation or the physics re-records this.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_randomization import rollout, typical_section

    expected = np.load(Path(__file__).parent / "data" / "randomized_observations.npz")
    env = env_class(randomization=typical_section(env_class.with_gripper))
    try:
        assert np.array_equal(rollout(env, 25), expected[name])
    finally:
        env.close()
