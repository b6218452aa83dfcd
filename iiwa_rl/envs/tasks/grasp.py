"""Grasp: pick up a cube from the table, lift it and hold it up.

The cube (4.5 cm by default) lies at a random position and yaw in front of the robot on
the table that carries it. Success: the cube at least `lift_height` above its resting
height, touched by both fingers, for `hold_time` seconds without a break. Success latches:
the episode runs on to its time limit (so holding on keeps paying) unless the config sets
`end_on_success`. A cube that leaves the table terminates the episode, and so does a finger
landing on the cube's top face where the config sets `end_on_finger_on_cube_top` (a
training option: see GraspConfig).
"""

from __future__ import annotations

import math

import numpy as np
import pybullet
from iiwa_deploy.actuation import CartesianTargetMapping, GripperCommandMapping
from iiwa_deploy.floor_guard import FloorGuard
from iiwa_deploy.grasp import FELL_OFF_BELOW_M, grasp_failure_reason
from iiwa_deploy.kinematics import KinematicChain
from iiwa_deploy.observation import ObservationInputs

from iiwa_rl.envs.base import IiwaEnv, RobotSnapshot, down_orientation, quaternion_yaw
from iiwa_rl.envs.config import GraspConfig
from iiwa_rl.envs.rewards import RewardInputs
from iiwa_rl.metrics import Metric, task_metrics

# The controller's words for a failed grasp (iiwa_deploy.grasp.grasp_failure_reason), each
# an evaluation column counting the episodes that ended so.
FAILURE_REASONS = ("missed", "not lifted", "dropped", "timed out")

# Where the table's frame (the middle of its top surface) stands, world frame, m: its top is
# the robot's base plane. The MuJoCo plant's grasp scene stands it in the same place.
TABLE_POSITION = (0.35, 0.0, 0.0)

# A finger-cube contact whose normal is within 45 degrees of vertical is on the top face.
TOP_CONTACT_MIN_NORMAL_Z = math.cos(math.radians(45.0))


class IiwaGraspEnv(IiwaEnv):
    """`IiwaGrasp-v0`. Action modes:
    - `cartesian` (5): TCP displacement x, y, z (scale m), yaw change (yaw_scale rad),
      gripper opening (-1 closed, 1 fully open); solved to joint targets by inverse
      kinematics with the gripper pointing down.
    - `joint_delta` (joints + 1): joint deltas (scale rad) and the gripper opening.
    Observation adds the cube's position, its yaw relative to the gripper (as sin and cos of
    four times the angle: a cube looks the same every quarter turn), the TCP-to-cube vector,
    the gripper width and the two finger contacts.

    Metrics (info["metrics/<name>"]): `tcp_to_cube_distance` (m), `cube_lift` (cube height
    above its rest, m), `max_cube_lift` (its highest this episode), `held` (held high now),
    `finger_contacts` (0 to 2), `held_steps`, `ever_grasped`, `cube_fell_off`; at an
    episode's end `failed_<reason>` (1 for the way it failed, FAILURE_REASONS) and
    `ended_on_cube_top` (1 where `end_on_finger_on_cube_top` ended it)."""

    config_class = GraspConfig
    config: GraspConfig
    with_gripper = True
    observation_layout = [
        ("joint_position_normalized", "joints"),
        ("joint_velocity_normalized", "joints"),
        ("tcp_position", 3),
        ("tcp_yaw_sincos", 2),
        ("gripper_width_normalized", 1),
        ("cube_position", 3),
        ("cube_relative_yaw_sincos4", 2),
        ("tcp_to_cube", 3),
        ("cube_lift", 1),
        ("finger_contacts", 2),
        ("previous_action", "action"),
    ]
    available_reward_terms = {
        "cube_distance_tanh",
        "finger_contact",
        "finger_on_cube_top",
        "cube_lift",
        "cube_held_high",
        "success",
        "action_rate",
        "action_magnitude",
        "joint_velocity",
        "joint_limit_proximity",
    }
    metrics = (
        Metric("tcp_to_cube_distance", "final TCP-to-cube distance", "m"),
        Metric("max_cube_lift", "max cube lift", "m", column="max_cube_lift"),
        Metric("cube_lift", "final cube lift", "m"),
        # Success latches; this says how many still hold the cube high when the episode ends.
        Metric("held", "held high at the end", column="held_at_end"),
        *(
            Metric(
                f"failed_{reason.replace(' ', '_')}",
                f"episodes failed: {reason}",
                over_episodes="count",
                column=f"failed_{reason.replace(' ', '_')}",
            )
            for reason in FAILURE_REASONS
        ),
        # Beside the failure reason (the controller's words: mostly "missed", the fingers
        # never closed on the cube), how many episodes end_on_finger_on_cube_top ended.
        Metric(
            "ended_on_cube_top",
            "episodes ended: a finger on the cube's top",
            over_episodes="count",
            column="ended_on_cube_top",
        ),
        Metric("finger_contacts", evaluated=False),
        Metric("held_steps", evaluated=False),
        Metric("ever_grasped", evaluated=False),
        Metric("cube_fell_off", evaluated=False),
    )
    headline_metric = "max_cube_lift"
    distance_metric = "tcp_to_cube_distance"

    @property
    def action_size(self) -> int:
        # Cartesian: TCP x, y, z, yaw and the gripper; joint modes: one per joint and the gripper.
        return 5 if self.config.action_mode == "cartesian" else self.robot.joint_count + 1

    @property
    def terminate_on_success(self) -> bool:
        return self.config.end_on_success

    def _episode_succeeded(self, reward_inputs: RewardInputs) -> bool:
        # The reward's `success` term pays for each step the hold condition is met; the
        # episode's success is whether it was ever met.
        self._succeeded = self._succeeded or reward_inputs.is_success
        return self._succeeded

    def _setup_scene(self) -> None:
        cfg = self.config
        self.table_id = self.sim.load_urdf(
            "table.urdf", position=TABLE_POSITION, fixed_base=True, maximal_coordinates=True
        )
        # The robot stands on the table: its base and first link rest in (or on) the top,
        # which would keep a useless contact manifold alive every physics step.
        # (PyBullet numbers a link as the joint that moves it: the first arm joint's link.)
        for link in (-1, self.robot.arm_joint_indices[0]):
            self.sim.client.setCollisionFilterPair(self.robot.body_id, self.table_id, link, -1, 0)
        self.cube_id = self.sim.load_urdf(
            "cube.urdf",
            position=(0.55, 0.0, cfg.cube_size / 2),
            global_scaling=cfg.cube_size / 0.045,  # the URDF's cube is 4.5 cm
            maximal_coordinates=True,
        )
        self._cube_body, self._cube_frictions = self._cube_recipe_from(self.cube_id)
        # Friction anchors on the pads and the cube: without them PyBullet lets a held cube
        # creep down between the fingers at full squeeze force (the scripted expert's cube
        # slid 27-29 mm in 2.3 s and fell out in 2 of 3 episodes; 30 solver iterations
        # changed nothing), which a real 40 N grip on a 100 g cube never does. The policy
        # trained on the creep learned to let go and grasp again. With anchors the cube
        # stays within 0.1 mm (tests/test_grasp.py::test_held_cube_does_not_creep).
        for link in self.robot.finger_link_indices:
            self.sim.client.changeDynamics(self.robot.body_id, link, frictionAnchor=1)
        self.sim.client.changeDynamics(self.cube_id, -1, **self._cube_frictions)
        self.cube_rest_height = cfg.cube_size / 2
        self.object_rest_height = self.cube_rest_height  # for the observation's cube_lift
        self._workspace_low = np.asarray(cfg.workspace_low, dtype=float)
        self._workspace_high = np.asarray(cfg.workspace_high, dtype=float)
        # Home: the gripper open, pointing down above the middle of the cube area. Solved
        # once by IK from the configured joint home so every reset starts the same way.
        # Of the two headings that look the same to the parallel gripper (yaw and yaw + pi),
        # take the one that leaves joint 7 near the middle of its range, so the policy can
        # turn the gripper either way.
        candidates = []
        for yaw in (0.0, np.pi):
            self.robot.reset_joint_positions(self.home_joint_positions)
            for _ in range(3):
                solution = self.robot.inverse_kinematics(
                    np.asarray(cfg.home_tcp_position),
                    down_orientation(yaw),
                    self.home_joint_positions,
                )
                self.robot.reset_joint_positions(solution)
            candidates.append(solution)
        self.home_joint_positions = min(candidates, key=lambda q: abs(q[6]))
        self.robot.reset_joint_positions(self.home_joint_positions)
        # The controller's own mappings (iiwa_deploy.actuation): the numpy IK on the arm's
        # chain from the URDF, the same chain a contract carries, and the gripper's command.
        margin = self.robot_config.target_margin_rad
        self.cartesian_mapping = CartesianTargetMapping(
            KinematicChain.from_contract(self.robot.kinematic_chain()),
            cfg.action_scale,
            cfg.yaw_scale,
            self._workspace_low,
            self._workspace_high,
            # The URDF's limits, as the arm's own clip used them (they equal the robot
            # configuration's within 1e-4; see IiwaEnv._check_robot_limits).
            self.robot.limits.lower + margin,
            self.robot.limits.upper - margin,
        )
        self.gripper_mapping = GripperCommandMapping(
            self.robot.max_gripper_width, self.robot.gripper_speed, self.robot.finger_force
        )
        # At least hold_time: 0.5 s at 25 Hz is 12.5 steps, so 13.
        self._hold_steps_needed = max(1, math.ceil(cfg.hold_time * cfg.control_hz - 1e-9))
        self._held_steps = 0
        self._succeeded = False
        self._cube_position = np.zeros(3)
        self._cube_yaw = 0.0
        self._contacts = (False, False)
        self._fingers_on_cube_top = 0
        self._ended_on_cube_top = False
        self._max_lift = 0.0

    def _reset_task(self, rng: np.random.Generator, options: dict) -> None:
        cfg = self.config
        xy = rng.uniform(cfg.cube_low, cfg.cube_high)
        yaw = rng.uniform(-cfg.cube_yaw_range, cfg.cube_yaw_range)
        # Drawn even when given, so a given pose leaves the rest of the episode's draws alone
        # (a benchmark replays the same cube poses in the env and through the controller).
        if options.get("cube_position") is not None:
            xy = np.asarray(options["cube_position"], dtype=float)
            if xy.shape != (2,) or not np.all(np.isfinite(xy)):
                raise ValueError(
                    f"options['cube_position'] must be 2 finite numbers (x, y), got {xy}"
                )
        if options.get("cube_yaw") is not None:
            yaw = float(options["cube_yaw"])
            if not math.isfinite(yaw):
                raise ValueError(f"options['cube_yaw'] must be a finite angle, got {yaw}")
        client = self.sim.client
        # A new cube each episode, not the old one teleported: a moved body keeps state that
        # no reset call clears (its contacts with the table, and more: saveState/restoreState
        # and refreshing its inertia did not make it exact), so the same seed replayed
        # differently on a used env and gymnasium's check_env failed. Costs about 0.2 ms and
        # 0.8 KB that PyBullet never frees per reset (80 MB per 100,000 episodes).
        client.removeBody(self.cube_id)
        perturbation = self._perturbation
        orientation = client.getQuaternionFromEuler([0.0, 0.0, yaw])
        if perturbation.cube_size is None:
            self.cube_id = self._new_cube((xy[0], xy[1], self.cube_rest_height), orientation)
        else:
            # A randomised size needs its own collision shape: loaded from the URDF, scaled.
            self.cube_rest_height = perturbation.cube_size / 2
            self.cube_id = self.sim.load_urdf(
                "cube.urdf",
                position=(xy[0], xy[1], self.cube_rest_height),
                orientation=orientation,
                global_scaling=perturbation.cube_size / 0.045,
                maximal_coordinates=True,
            )
        if perturbation.cube_mass is not None:
            client.changeDynamics(self.cube_id, -1, mass=perturbation.cube_mass)
        if perturbation.cube_friction is not None:
            client.changeDynamics(self.cube_id, -1, lateralFriction=perturbation.cube_friction)
        self._cube_position_history: list[np.ndarray] = []
        self.robot.command_gripper_width(self.robot.max_gripper_width)
        self._held_steps = 0
        self._succeeded = False
        self._max_lift = 0.0
        self._ever_grasped = False
        self._fell_off = False
        self._ended_on_cube_top = False
        self._read_task_state()

    def _cube_recipe_from(self, body_id: int) -> tuple[dict, dict]:
        """How to build, without the URDF, a cube equal to `body_id` (loaded from
        cube.urdf): the createMultiBody arguments (its shapes, made once and shared by every
        cube, and its mass) and the changeDynamics frictions, as PyBullet read them from the
        URDF. A new cube per episode from these costs a third of a URDF load (0.18 against
        0.5 ms); PyBullet derives the inertia from mass and shape either way."""
        client = self.sim.client
        dynamics = client.getDynamicsInfo(body_id, -1)
        visual = client.getVisualShapeData(body_id)[0]
        half_extents = [size / 2.0 for size in visual[3]]
        body = {
            "baseMass": dynamics[0],
            "baseCollisionShapeIndex": client.createCollisionShape(
                pybullet.GEOM_BOX, halfExtents=half_extents
            ),
            "baseVisualShapeIndex": client.createVisualShape(
                pybullet.GEOM_BOX, halfExtents=half_extents, rgbaColor=list(visual[7])
            ),
            "useMaximalCoordinates": True,
        }
        frictions = {
            "lateralFriction": dynamics[1],
            "rollingFriction": dynamics[6],
            "spinningFriction": dynamics[7],
            "frictionAnchor": 1,  # see _setup_scene
        }
        return body, frictions

    def _new_cube(self, position, orientation) -> int:
        client = self.sim.client
        body_id = client.createMultiBody(
            basePosition=list(position), baseOrientation=list(orientation), **self._cube_body
        )
        client.changeDynamics(body_id, -1, **self._cube_frictions)
        return body_id

    def _read_task_state(self) -> None:
        """The cube's pose and finger contacts, after a reset or a step."""
        position, orientation = self.sim.client.getBasePositionAndOrientation(self.cube_id)
        self._cube_position = np.array(position) - self.robot.base_position
        self._cube_yaw = quaternion_yaw(orientation)
        latency = self._perturbation.cube_pose_latency_steps
        if latency:
            history = self._cube_position_history
            history.append(self._cube_position)
            del history[: -latency - 1]
        # One contact query gives both whether each finger touches the cube and whether
        # it touches it from above: a normal within 45 degrees of vertical is the pad's
        # underside on the top face (a side grasp's normals are level).
        left, right = self.robot.finger_contact_normals(self.cube_id)
        self._contacts = (bool(left), bool(right))
        # Most steps touch nothing: no generators to run over empty lists then.
        self._fingers_on_cube_top = (
            sum(any(z >= TOP_CONTACT_MIN_NORMAL_Z for z in normals) for normals in (left, right))
            if left or right
            else 0
        )

    # ----------------------------------------------------------------- actions
    def _make_floor_guard(self) -> FloorGuard:
        """The controller's floor guard, with the floor its cell gate holds (the table plane
        plus the robot configuration's clearance): the setpoints between two targets keep
        the finger tips off the table here as they do through the controller."""
        return FloorGuard(
            self.cartesian_mapping.chain,
            self._finger_tip_points(),
            self._table_height() + self.robot_config.workspace.table_clearance_m,
            self.cartesian_mapping.target_lower,
            self.cartesian_mapping.target_upper,
        )

    def _apply_action(self, action: np.ndarray) -> None:
        cfg = self.config
        current = self._current  # measured after the last step; nothing moved since
        q = current.joint_positions
        if cfg.action_mode == "cartesian":
            # One differential-IK step: the target is a few cm away, and the next control
            # step corrects what is left.
            joint_targets = self.cartesian_mapping.target(
                action, q, current.tcp_position, current.tcp_orientation, current.tcp_yaw
            )
        else:
            joint_targets = self.joint_target_mapping.target(action, q)
        # The gripper's command holds for the whole policy period; the arm's target goes
        # through the controller's command stream.
        self.robot.command_gripper_width(self.gripper_mapping.width(action[-1]))
        self._drive_joints(joint_targets)

    # -------------------------------------------------------------- observation
    def _task_observation_inputs(self, inputs: ObservationInputs) -> None:
        # The cube was read (_read_task_state) for this very state.
        inputs.object_position = (
            self._seen_cube_position() if self._senses_cube else self._cube_position
        )
        inputs.object_yaw = self._cube_yaw
        inputs.finger_contacts = self._contacts

    def _seen_cube_position(self) -> np.ndarray:
        """The cube position as a camera would report it: `cube_pose_latency` steps old,
        offset by the episode's calibration bias, with this step's noise."""
        perturbation = self._perturbation
        position = (
            self._cube_position_history[0]
            if perturbation.cube_pose_latency_steps
            else self._cube_position
        )
        position = position + perturbation.cube_position_bias
        if perturbation.cube_position_noise:
            position = position + self.np_random.normal(0.0, perturbation.cube_position_noise, 3)
        return position

    def _evaluate(self, robot: RobotSnapshot, action: np.ndarray) -> tuple[RewardInputs, bool]:
        cfg = self.config
        # The cube was read right after the step (_read_task_state).
        lift = float(self._cube_position[2] - self.cube_rest_height)
        held_high = all(self._contacts) and lift >= cfg.lift_height
        self._held_steps = self._held_steps + 1 if held_high else 0
        self._max_lift = max(self._max_lift, lift)
        self._ever_grasped = self._ever_grasped or all(self._contacts)
        inputs = self.reward_inputs(
            robot,
            action,
            is_success=self._held_steps >= self._hold_steps_needed,
            cube_position=self._cube_position,
            cube_lift=lift,
            finger_contacts=self._contacts,
            fingers_on_cube_top=self._fingers_on_cube_top,
            lift_target=cfg.lift_height,
        )
        self._fell_off = bool(self._cube_position[2] < -FELL_OFF_BELOW_M)
        # A success already latched stays one (the episode's success is whether it was
        # ever met); the episode ends either way.
        self._ended_on_cube_top = cfg.end_on_finger_on_cube_top and self._fingers_on_cube_top > 0
        return inputs, self._fell_off or self._ended_on_cube_top

    def _task_blew_up(self) -> bool:
        vx, vy, vz = self.sim.client.getBaseVelocity(self.cube_id)[0]
        # `<=` is False for NaN: a non-finite velocity counts as a blow-up too.
        return not vx * vx + vy * vy + vz * vz <= _CUBE_BLOWUP_SPEED**2

    def _task_metrics(self, robot: RobotSnapshot) -> dict:
        return {
            "tcp_to_cube_distance": math.dist(self._cube_position, robot.tcp_position),
            "max_cube_lift": self._max_lift,
            "cube_lift": float(self._cube_position[2] - self.cube_rest_height),
            "held": self._held_steps > 0,
            "finger_contacts": int(self._contacts[0]) + int(self._contacts[1]),
            "held_steps": self._held_steps,
            "ever_grasped": self._ever_grasped,
            "cube_fell_off": self._fell_off,
        }

    def _episode_end_metrics(self, metrics: dict, succeeded: bool) -> dict:
        reason = grasp_failure_reason({**metrics, "is_success": succeeded})
        return {
            **{f"failed_{r.replace(' ', '_')}": reason == r for r in FAILURE_REASONS},
            "ended_on_cube_top": self._ended_on_cube_top,
        }

    def status_lines(self, metrics: dict) -> list[str]:
        lines = []
        if "tcp_to_cube_distance" in metrics:
            lines.append(f"TCP to cube {float(metrics['tcp_to_cube_distance']) * 100:.1f} cm")
        if "cube_lift" in metrics:
            lines.append(
                f"cube lift {float(metrics['cube_lift']) * 100:.1f} cm / "
                f"{self.config.lift_height * 100:.0f} cm"
            )
            lines.append(f"finger contacts {int(metrics.get('finger_contacts', 0))}/2")
        return lines

    # ------------------------------------------------------------- description
    def _table_height(self) -> float:
        """The table's top in the arm's base frame (m)."""
        _, table_top = self.sim.client.getAABB(self.table_id)
        return float(table_top[2]) - float(self.robot.base_position[2])

    def _finger_tip_points(self) -> list[list[float]]:
        """The finger tips in the TCP frame: the fingers' far end along the tool axis, at
        the full opening (the widest the gripper ever is), from the URDF's link geometry."""
        robot = self.robot
        tip_depth = robot.finger_tip_depth
        tip_side = robot.max_gripper_width / 2.0 + robot.finger_thickness
        return [[0.0, tip_side, tip_depth], [0.0, -tip_side, tip_depth]]

    def describe_contract(self) -> dict:
        """Adds the `grasp` section the controller reads (iiwa_deploy.grasp.GraspTask)."""
        contract = super().describe_contract()
        cfg, robot = self.config, self.robot
        contract["grasp"] = {
            "workspace_low": list(cfg.workspace_low),
            "workspace_high": list(cfg.workspace_high),
            "yaw_scale": cfg.yaw_scale,
            "gripper": {
                "max_width_m": robot.max_gripper_width,
                "speed_m_s": robot.gripper_speed,
                "force_n": robot.finger_force,
            },
            "table_height_m": self._table_height(),
            "finger_tip_points_m": self._finger_tip_points(),
            "object_size_m": cfg.cube_size,
            "object_rest_height_m": self.cube_rest_height,
            "object_area_low": list(cfg.cube_low),
            "object_area_high": list(cfg.cube_high),
            "object_yaw_range_rad": cfg.cube_yaw_range,
            "lift_height_m": cfg.lift_height,
            "hold_s": cfg.hold_time,
        }
        return contract

    # ---------------------------------------------------------------- rendering
    def camera_target(self):
        # Framed to keep a cube lifted 40 cm in view (the learned policy lifts that high).
        return [0.5, 0.0, 0.25], 1.5, 45.0, -25.0


# A cube faster than this (m/s) means the physics blew up.
_CUBE_BLOWUP_SPEED = 20.0


def failure_reason(info: dict) -> str | None:
    """Why the grasp episode that ended with `info` failed (None: it succeeded). The
    classification is the controller's own (iiwa_deploy.grasp), so a deployed grasp is
    judged in the same words; the env's figures are its `metrics/` entries."""
    return grasp_failure_reason({**task_metrics(info), "is_success": info.get("is_success")})
