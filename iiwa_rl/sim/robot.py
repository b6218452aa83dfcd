"""The KUKA LBR iiwa 14 R820, with or without the parallel-jaw gripper.

Joints and links are looked up by name, never by index. Joint-position commands pass
each axis's datasheet torque and speed to PyBullet's motor (`force`, `maxVelocity`):
PyBullet enforces a limit only when the motor carries it, and without them an axis was
seen spinning at 60 rad/s. The speed is set on each motor once (it persists in the
motor); the torque travels with every command.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import numpy as np
import pybullet
from iiwa_deploy.kinematics import (
    DEFAULT_IK_DAMPING,
    KinematicChain,
    differential_ik_step,
    quaternion_multiply,  # noqa: F401  (re-exported: tests and callers import it from here)
    rotation_error_floats,
)

from iiwa_rl.sim.client import BulletSim, asset_path

ARM_JOINT_NAMES = tuple(f"iiwa_joint_{axis}" for axis in range(1, 8))
FINGER_JOINT_NAMES = ("gripper_finger_left_joint", "gripper_finger_right_joint")
LAST_ARM_LINK = "iiwa_link_7"
# Fixed joints from link 7 to the flange, and on to the gripper's TCP.
_FLANGE_JOINTS = ("iiwa_joint_flange",)
_GRIPPER_TCP_JOINTS = ("iiwa_joint_flange", "gripper_mount", "tcp_joint")
# A slightly bent pose in front of the robot, away from singularities and joint limits.
HOME_JOINT_POSITIONS = np.array([0.0, 0.35, 0.0, -1.6, 0.0, 1.2, 0.0])


@dataclass(frozen=True)
class JointLimits:
    """Datasheet limits of the arm's axes, in joint order (rad, rad/s, N m)."""

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray

    # Runs every robot period: the bounds per margin are computed once (cached_property
    # writes to the instance dict, which a frozen dataclass allows).
    @functools.cached_property
    def _clip_bounds(self) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        return {}

    def clip(self, joint_positions: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Clip into [lower + margin, upper - margin]."""
        bounds = self._clip_bounds.get(margin)
        if bounds is None:
            bounds = self._clip_bounds[margin] = (self.lower + margin, self.upper - margin)
        # minimum/maximum: np.clip's dispatch costs more than the work on 7 numbers.
        return np.minimum(np.maximum(joint_positions, bounds[0]), bounds[1])


def _fixed_offset(urdf: str, joint_names: tuple[str, ...]) -> np.ndarray:
    """Summed origin of a chain of fixed joints (all unrotated), read from the URDF."""
    root = ElementTree.parse(asset_path("urdf", urdf)).getroot()
    offset = np.zeros(3)
    for name in joint_names:
        origin = root.find(f"joint[@name='{name}']/origin")
        rpy = [float(v) for v in origin.get("rpy", "0 0 0").split()]
        if any(abs(v) > 1e-12 for v in rpy):
            raise ValueError(f"{urdf}: fixed joint {name} must not rotate the frame")
        offset += [float(v) for v in origin.get("xyz").split()]
    return offset


def rotation_error(current, target) -> np.ndarray:
    """Rotation vector (axis times angle, rad, world frame) turning `current` into `target`."""
    return np.array(rotation_error_floats(current, target))


class Iiwa14:
    """The arm in a `BulletSim`, fixed at `base_position` (the base frame is the world frame
    rotated by nothing and shifted by that position).

    Args:
        sim: the simulation that owns the body.
        with_gripper: load the variant with the parallel-jaw gripper on the flange.
        base_position: where link_0 stands, m.
    """

    def __init__(self, sim: BulletSim, with_gripper: bool = False, base_position=(0.0, 0.0, 0.0)):
        self.sim = sim
        self.client = sim.client
        self.with_gripper = with_gripper
        self.base_position = np.asarray(base_position, dtype=float)
        urdf = "iiwa14_gripper.urdf" if with_gripper else "iiwa14.urdf"
        # Merging the fixed links (flange, palm, TCP frame) into link 7 leaves the solver
        # fewer bodies: about a quarter off each physics step. The TCP is then link 7's
        # frame shifted by the fixed offset read from the same URDF.
        self.body_id = sim.load_urdf(
            urdf, position=base_position, fixed_base=True, flags=pybullet.URDF_MERGE_FIXED_LINKS
        )
        self.tcp_offset = _fixed_offset(
            urdf, _GRIPPER_TCP_JOINTS if with_gripper else _FLANGE_JOINTS
        )
        self._tcp_offset_list = self.tcp_offset.tolist()

        joints, links = {}, {}
        for index in range(self.client.getNumJoints(self.body_id)):
            info = self.client.getJointInfo(self.body_id, index)
            joints[info[1].decode()] = info
            links[info[12].decode()] = index
        self._joint_info = joints
        self.arm_joint_indices = [joints[name][0] for name in ARM_JOINT_NAMES]
        self.limits = JointLimits(
            lower=np.array([joints[n][8] for n in ARM_JOINT_NAMES]),
            upper=np.array([joints[n][9] for n in ARM_JOINT_NAMES]),
            velocity=np.array([joints[n][11] for n in ARM_JOINT_NAMES]),
            effort=np.array([joints[n][10] for n in ARM_JOINT_NAMES]),
        )
        # Plain Python lists: the motor loop runs every control step.
        self._arm_efforts = self.limits.effort.tolist()
        # Extra motor arguments (gains) a randomised episode sets; empty: PyBullet's defaults.
        self._motor_options: dict[str, list[float]] = {}
        self._arm_speeds = self.limits.velocity.tolist()
        self.last_arm_link_index = links[LAST_ARM_LINK]
        self.link_indices = links
        if with_gripper:
            self.finger_joint_indices = [joints[name][0] for name in FINGER_JOINT_NAMES]
            self.finger_link_indices = [joints[name][0] for name in FINGER_JOINT_NAMES]
            self.finger_travel = float(joints[FINGER_JOINT_NAMES[0]][9])
            self.finger_force = float(joints[FINGER_JOINT_NAMES[0]][10])
            self.finger_speed = float(joints[FINGER_JOINT_NAMES[0]][11])
        # PyBullet's default velocity motors would brake every joint: switch them off so
        # only our position commands act.
        for index in range(self.client.getNumJoints(self.body_id)):
            self.client.setJointMotorControl2(
                self.body_id, index, pybullet.VELOCITY_CONTROL, targetVelocity=0.0, force=0.0
            )
        # Each position motor gets its datasheet speed here, once: the speed persists in
        # the motor, and the per-step commands go through setJointMotorControlArray (a
        # fifth of the cost of a call per joint), which cannot carry it.
        motors = list(zip(self.arm_joint_indices, self._arm_efforts, self._arm_speeds))
        if with_gripper:
            motors += [(i, self.finger_force, self.finger_speed) for i in self.finger_joint_indices]
            self._finger_forces = [self.finger_force] * 2
            self._finger_motor_speed = self.finger_speed
        for index, force, speed in motors:
            self.client.setJointMotorControl2(
                self.body_id,
                index,
                pybullet.POSITION_CONTROL,
                targetPosition=self.client.getJointState(self.body_id, index)[0],
                force=force,
                maxVelocity=speed,
            )
        # One state read covers the arm and the fingers.
        self._state_joint_indices = self.arm_joint_indices + (
            self.finger_joint_indices if with_gripper else []
        )
        self._damping_matrices: dict[float, np.ndarray] = {}  # d^2 I per damping, for the IK
        # The motor's maxVelocity caps only the speed the motor drives towards; a joint
        # whose motor is at its torque limit is still swung past its speed by the others
        # (A3 reached twice its 100 deg/s when A2 and A4 reversed: the simulated arm lacks
        # the real one's geared rotor inertia). PyBullet's own cap (maxJointVelocity) is one
        # value for the whole body, so the limit is enforced per joint after every step.
        self.peak_speed_fraction = 0.0
        # What the clamp read after the latest physics step, and that step's number: the
        # state after a step without a second read (see state_after_step).
        self._read_after_step: tuple[int, tuple, list[float]] | None = None
        sim.post_step_hooks.append(self._limit_joint_speeds)

    def _limit_joint_speeds(self) -> None:
        """Clamp each arm joint's speed to its datasheet limit, and record in
        `peak_speed_fraction` the largest |speed| / limit met before clamping (inf for a
        non-finite speed, which is left alone so that blow-up detection sees it); whoever
        reads the peak clears it."""
        states = self.client.getJointStates(self.body_id, self._state_joint_indices)
        velocities = [state[1] for state in states[:7]]
        for axis, (index, limit) in enumerate(zip(self.arm_joint_indices, self._arm_speeds)):
            speed = velocities[axis]
            if -limit <= speed <= limit:
                continue
            if speed != speed or abs(speed) == float("inf"):
                self.peak_speed_fraction = float("inf")
                continue
            self.peak_speed_fraction = max(self.peak_speed_fraction, abs(speed) / limit)
            velocities[axis] = limit if speed > 0.0 else -limit
            self.client.resetJointState(self.body_id, index, states[axis][0], velocities[axis])
        # Kept raw: only the last physics step's reading of a control step is unpacked.
        self._read_after_step = (self.sim.physics_steps, states, velocities)

    # ------------------------------------------------------------------ state
    @property
    def max_gripper_width(self) -> float:
        return 2.0 * self.finger_travel if self.with_gripper else 0.0

    @functools.cached_property
    def _finger_geometry(self) -> tuple[float, float]:
        """(tip depth below the TCP along the tool axis, finger thickness), m, from the
        URDF: the finger's collision box, where its joint sits on the palm, and the TCP."""
        root = ElementTree.parse(asset_path("urdf", "iiwa14_gripper.urdf")).getroot()
        joint_z = float(
            root.find(f"joint[@name='{FINGER_JOINT_NAMES[0]}']/origin").get("xyz").split()[2]
        )
        collision = root.find("link[@name='gripper_finger_left']/collision")
        box_z = float(collision.find("origin").get("xyz").split()[2])
        size = [float(v) for v in collision.find("geometry/box").get("size").split()]
        tcp_z = float(root.find("joint[@name='tcp_joint']/origin").get("xyz").split()[2])
        return joint_z + box_z + size[2] / 2.0 - tcp_z, size[1]

    @property
    def finger_tip_depth(self) -> float:
        return self._finger_geometry[0]

    @property
    def finger_thickness(self) -> float:
        return self._finger_geometry[1]

    @property
    def gripper_speed(self) -> float:
        """How fast the pad distance can change (m/s): both fingers at their motor speed."""
        return 2.0 * self.finger_speed if self.with_gripper else 0.0

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Measured arm joint positions (rad) and velocities (rad/s)."""
        positions, velocities, _ = self.joint_and_gripper_state()
        return positions, velocities

    def joint_and_gripper_state(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Arm joint positions (rad) and velocities (rad/s), and the gripper width (m; 0
        without a gripper), from one read of the simulator."""
        states = self.client.getJointStates(self.body_id, self._state_joint_indices)
        return self._unpack_states(states, [state[1] for state in states[:7]])

    def state_after_step(self) -> tuple[np.ndarray, np.ndarray, float]:
        """`joint_and_gripper_state()` right after `BulletSim.step`, as the speed clamp read
        it after the last physics step (with the speeds it clamped): every state read
        copies PyBullet's whole state buffer (about 30 KB), so one read fewer per control
        step counts. Call it only between a step and any other change to the robot (an env
        does, in its step); after a reset, or with no step since, it reads afresh."""
        read = self._read_after_step
        if read is None or read[0] != self.sim.physics_steps:
            return self.joint_and_gripper_state()
        return self._unpack_states(read[1], read[2])

    def _unpack_states(self, states, arm_velocities) -> tuple[np.ndarray, np.ndarray, float]:
        positions = np.array([state[0] for state in states[:7]])
        width = states[7][0] + states[8][0] if self.with_gripper else 0.0
        return positions, np.array(arm_velocities), width

    def applied_torques(self) -> np.ndarray:
        """Motor torques applied in the last physics step (N m)."""
        states = self.client.getJointStates(self.body_id, self.arm_joint_indices)
        return np.array([s[3] for s in states])

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (m) and orientation quaternion (x, y, z, w) in the base frame."""
        state = self.client.getLinkState(
            self.body_id, self.last_arm_link_index, computeForwardKinematics=1
        )
        position, orientation = pybullet.multiplyTransforms(
            state[4], state[5], self._tcp_offset_list, (0.0, 0.0, 0.0, 1.0)
        )
        return np.asarray(position) - self.base_position, np.asarray(orientation)

    def finger_contacts(self, body_id: int) -> tuple[bool, bool]:
        """Whether the left and right finger touch `body_id`."""
        # One query for all of the robot's contacts with the body; field 3 is our link.
        touching = {point[3] for point in self.client.getContactPoints(self.body_id, body_id)}
        left, right = self.finger_link_indices
        return left in touching, right in touching

    # --------------------------------------------------------------- commands
    def reset_joint_positions(self, joint_positions, gripper_width: float | None = None) -> None:
        """Teleport the arm (and fingers) to a configuration at rest; for episode resets."""
        joint_positions = np.asarray(joint_positions, dtype=float)
        self._read_after_step = None  # the teleport outdates it
        for index, position in zip(self.arm_joint_indices, joint_positions, strict=True):
            self.client.resetJointState(self.body_id, index, float(position), 0.0)
        self.command_joint_positions(joint_positions)
        if self.with_gripper:
            width = self.max_gripper_width if gripper_width is None else gripper_width
            for index in self.finger_joint_indices:
                self.client.resetJointState(self.body_id, index, width / 2.0, 0.0)
            self.command_gripper_width(width)

    def command_joint_positions(self, targets: np.ndarray) -> np.ndarray:
        """Send position targets (clipped to the joint range); returns what was sent."""
        targets = self.limits.clip(np.asarray(targets, dtype=float))
        self.client.setJointMotorControlArray(
            self.body_id,
            self.arm_joint_indices,
            pybullet.POSITION_CONTROL,
            targetPositions=targets.tolist(),
            forces=self._arm_efforts,
            **self._motor_options,
        )
        return targets

    def set_motor_parameters(
        self,
        position_gain: float | None = None,
        velocity_gain: float | None = None,
        force_limits: np.ndarray | None = None,
    ) -> None:
        """The arm's position motors from the next command on: PyBullet's position and
        velocity gains (None: its defaults) and torque limits (None: the datasheet's)."""
        options = {}
        if position_gain is not None:
            options["positionGains"] = [float(position_gain)] * 7
        if velocity_gain is not None:
            options["velocityGains"] = [float(velocity_gain)] * 7
        self._motor_options = options
        efforts = self.limits.effort if force_limits is None else np.asarray(force_limits)
        self._arm_efforts = [float(v) for v in efforts]

    def command_gripper_width(self, width: float) -> None:
        """Drive both fingers symmetrically towards a pad distance `width` (m), with the
        gripper's finite force, so a closing grip squeezes an object instead of crushing it."""
        half = min(max(float(width), 0.0), self.max_gripper_width) / 2.0
        self.client.setJointMotorControlArray(
            self.body_id,
            self.finger_joint_indices,
            pybullet.POSITION_CONTROL,
            targetPositions=[half, half],
            forces=self._finger_forces,
        )

    def command_gripper(self, width: float, speed: float, force: float) -> None:
        """A gripper command as a real gripper takes it (iiwa_deploy GripperCommand): pad
        distance `width` (m), at most `speed` (m/s of pad distance) and `force` (N per
        finger). With the trained speed and force it is `command_gripper_width`."""
        finger_speed = float(speed) / 2.0
        if finger_speed != self._finger_motor_speed:
            for index in self.finger_joint_indices:
                self.client.setJointMotorControl2(
                    self.body_id,
                    index,
                    pybullet.POSITION_CONTROL,
                    targetPosition=self.client.getJointState(self.body_id, index)[0],
                    force=float(force),
                    maxVelocity=finger_speed,
                )
            self._finger_motor_speed = finger_speed
        self._finger_forces = [min(float(force), self.finger_force)] * 2
        self.command_gripper_width(width)

    def inverse_kinematics(
        self,
        tcp_position: np.ndarray,
        tcp_orientation: np.ndarray,
        rest_positions: np.ndarray | None = None,
        iterations: int = 20,
    ) -> np.ndarray:
        """Joint positions that put the TCP at a pose (base frame); null space pulled
        towards `rest_positions` (default: the current configuration)."""
        current, _ = self.joint_state()
        rest = current if rest_positions is None else np.asarray(rest_positions)
        limits = self.limits
        extra = 2 if self.with_gripper else 0
        # IK solves for link 7's frame: step back from the TCP along the fixed offset.
        inverse_offset = [-v for v in self._tcp_offset_list]
        link_position, _ = pybullet.multiplyTransforms(
            list(np.asarray(tcp_position) + self.base_position),
            list(tcp_orientation),
            inverse_offset,
            (0.0, 0.0, 0.0, 1.0),
        )
        solution = self.client.calculateInverseKinematics(
            self.body_id,
            self.last_arm_link_index,
            link_position,
            list(tcp_orientation),
            lowerLimits=list(limits.lower) + [0.0] * extra,
            upperLimits=list(limits.upper) + [self.finger_travel if extra else 0.0] * extra,
            jointRanges=list(limits.upper - limits.lower) + [0.1] * extra,
            restPoses=list(rest) + [0.0] * extra,
            maxNumIterations=iterations,
            residualThreshold=1e-4,
        )
        return limits.clip(np.asarray(solution[:7]))

    @functools.cached_property
    def chain(self) -> KinematicChain:
        """The arm's kinematic chain from its URDF, in numpy (what a contract carries)."""
        return KinematicChain.from_contract(self.kinematic_chain())

    def differential_ik(
        self,
        joint_positions: np.ndarray,
        tcp_position: np.ndarray,
        tcp_orientation: np.ndarray,
        target_position: np.ndarray,
        target_orientation: np.ndarray,
        damping: float = DEFAULT_IK_DAMPING,
        margin: float = 0.0,
    ) -> np.ndarray:
        """One damped-least-squares step towards a TCP pose (base frame), through the
        controller's numpy IK (iiwa_deploy.kinematics.differential_ik_step); joint targets at
        least `margin` (rad) inside the joint ranges."""
        return differential_ik_step(
            self.chain,
            joint_positions,
            tcp_position,
            tcp_orientation,
            target_position,
            target_orientation,
            self.limits.lower + margin,
            self.limits.upper - margin,
            damping,
        )

    def pybullet_jacobian(self, joint_positions: np.ndarray) -> np.ndarray:
        """PyBullet's own 6 x 7 Jacobian at the TCP (linear rows, then angular): the
        reference the numpy Jacobian is tested against."""
        # The finger positions do not move link 7; any value serves.
        extra = [self.finger_travel] * 2 if self.with_gripper else []
        zeros = [0.0] * (7 + len(extra))
        linear, angular = self.client.calculateJacobian(
            self.body_id,
            self.last_arm_link_index,
            self._tcp_offset_list,
            np.asarray(joint_positions, dtype=float).tolist() + extra,
            zeros,
            zeros,
        )
        return np.array(linear + angular)[:, :7]

    # ------------------------------------------------------------ description
    def kinematic_chain(self) -> dict:
        """The arm's joint frames from the URDF, as the deploy runtime's numpy forward
        kinematics reads them: each joint's origin relative to its parent link, its axis,
        and the fixed offset from link 7 to the TCP."""
        urdf = "iiwa14_gripper.urdf" if self.with_gripper else "iiwa14.urdf"
        root = ElementTree.parse(asset_path("urdf", urdf)).getroot()
        joints = []
        for name in ARM_JOINT_NAMES:
            element = root.find(f"joint[@name='{name}']")
            origin = element.find("origin")
            joints.append(
                {
                    "name": name,
                    "origin_xyz": [float(v) for v in origin.get("xyz").split()],
                    "origin_rpy": [float(v) for v in origin.get("rpy", "0 0 0").split()],
                    "axis": [float(v) for v in element.find("axis").get("xyz").split()],
                }
            )
        return {
            "joints": joints,
            "tcp_offset_xyz": self.tcp_offset.tolist(),
            "tcp_offset_rpy": [0.0, 0.0, 0.0],
        }
