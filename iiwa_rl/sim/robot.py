"""A robot arm in PyBullet as a component: what an environment needs from an arm
(`SimRobot`), the description that makes one (`RobotDescription`: its URDF, joint and link
names, TCP frame, home pose and the controller's robot configuration), the arm built from
such a description (`UrdfArm`), and the registry that names them (`env.kwargs.robot`).

A new arm is one file that registers its description (see iiwa14.py) plus its robot YAML
for the controller. Joints and links are looked up by name, never by index.

Joint-position commands pass each axis's URDF torque and speed limit to PyBullet's motor
(`force`, `maxVelocity`): PyBullet enforces a limit only when the motor carries it, and
without them an iiwa axis was seen spinning at 60 rad/s. The speed is set on each motor
once (it persists in the motor); the torque travels with every command.
"""

from __future__ import annotations

import functools
import importlib
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pybullet

from iiwa_rl.sim.client import BulletSim, asset_path


@dataclass(frozen=True)
class JointLimits:
    """URDF limits of the arm's axes, in joint order (rad, rad/s, N m)."""

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray

    # The bounds per margin are computed once (cached_property writes to the instance
    # dict, which a frozen dataclass allows).
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


def fixed_offset(urdf: str, joint_names: tuple[str, ...]) -> np.ndarray:
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


# ------------------------------------------------------------------ description
@dataclass(frozen=True)
class GripperDescription:
    """A parallel-jaw gripper on the arm's flange, as its URDF (the arm with the gripper)
    names it: two prismatic fingers mirrored about the palm, each opening by its joint's
    upper limit, with the TCP between the pads."""

    urdf: str  # the arm with the gripper: a file under assets/urdf, or an absolute path
    finger_joint_names: tuple[str, str]  # left, right
    finger_link_name: str  # the left finger's link (its collision box gives the tip geometry)
    tcp_joints: tuple[str, ...]  # fixed joints from the last arm link to the gripper's TCP


@dataclass(frozen=True)
class RobotDescription:
    """Everything that makes one arm: the env builds it from this (`build`) and checks the
    controller's robot configuration against its URDF."""

    name: str  # the registry key, `env.kwargs.robot`
    urdf: str  # the bare arm: a file under assets/urdf, or an absolute path
    joint_names: tuple[str, ...]  # the actuated arm joints, base to tip
    last_link: str  # the link the TCP is fixed to
    tcp_joints: tuple[str, ...]  # fixed joints from `last_link` to the bare arm's TCP (flange)
    home_joint_positions: tuple[float, ...]  # rad, the default `env.kwargs.home_joint_positions`
    # The controller's robot YAML for this arm (limits, robot period, interpolator, safety);
    # None: the controller's shipped one (iiwa_deploy/robot_iiwa14.yaml).
    robot_config: str | None = None
    gripper: GripperDescription | None = None

    def __post_init__(self) -> None:
        if len(self.home_joint_positions) != len(self.joint_names):
            raise ValueError(
                f"robot {self.name}: home_joint_positions has {len(self.home_joint_positions)} "
                f"values for {len(self.joint_names)} joints"
            )

    def urdf_for(self, with_gripper: bool) -> str:
        if not with_gripper:
            return self.urdf
        if self.gripper is None:
            raise ValueError(f"robot {self.name} has no gripper")
        return self.gripper.urdf

    def build(self, sim: BulletSim, with_gripper: bool = False, base_position=(0.0, 0.0, 0.0)):
        """The arm in `sim`."""
        return UrdfArm(sim, self, with_gripper, base_position)


_ROBOTS: dict[str, RobotDescription] = {}


def register_robot(description: RobotDescription) -> RobotDescription:
    """Make `description` available as `env.kwargs.robot: <its name>`."""
    known = _ROBOTS.get(description.name)
    if known is not None and known != description:
        raise ValueError(f"a different robot is already registered as {description.name!r}")
    _ROBOTS[description.name] = description
    return description


def robot_names() -> list[str]:
    return sorted(_ROBOTS)


def robot_description(name: str) -> RobotDescription:
    """The registered robot `name`, or with `module:name` the robot that importing `module`
    registers (as gymnasium's `module:EnvId`: a user's arm in their own package, which
    spawned env workers import too); a ValueError naming the known ones otherwise."""
    module, separator, robot = name.rpartition(":")
    if separator:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"robot {name!r}: cannot import {module}: {error}") from None
        name = robot
    try:
        return _ROBOTS[name]
    except KeyError:
        raise ValueError(
            f"unknown robot {name!r}; registered robots: {', '.join(robot_names())}"
        ) from None


# -------------------------------------------------------------------- interface
class SimRobot(Protocol):
    """What an environment needs from a simulated arm. Positions, velocities and limits are
    per joint in `joint_names` order (rad, rad/s, N m); poses are in the base frame (m,
    quaternion x, y, z, w)."""

    description: RobotDescription
    joint_names: tuple[str, ...]
    joint_count: int
    limits: JointLimits
    with_gripper: bool
    max_gripper_width: float  # m; 0 without a gripper
    base_position: np.ndarray
    body_id: int
    # The largest |speed| / limit met since the env cleared it (inf for a non-finite speed).
    peak_speed_fraction: float

    def reset_joint_positions(self, joint_positions, gripper_width: float | None = None) -> None:
        """Teleport to a configuration at rest (episode resets)."""

    def command_joint_positions(self, targets: np.ndarray) -> np.ndarray:
        """The position motors' targets for one robot period (clipped to the range)."""

    def command_setpoint(self, setpoint: list[float]) -> list[float]:
        """`command_joint_positions` with plain floats in and out (the command stream's
        per-period setpoint)."""

    def set_motor_parameters(self, position_gain=None, velocity_gain=None, force_limits=None):
        """The motors' gains and torque limits from the next command on (randomisation)."""

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Measured joint positions and velocities."""

    def joint_and_gripper_state(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Joint positions, velocities and the gripper width, from one read."""

    def state_after_step(self) -> tuple[np.ndarray, np.ndarray, float]:
        """`joint_and_gripper_state()` right after a physics step, without a second read."""

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position and orientation."""

    def kinematic_chain(self) -> dict:
        """The joint frames and TCP offset as a contract carries them (the controller's
        forward kinematics and differential IK run on these)."""


class SimGripperRobot(SimRobot, Protocol):
    """An arm with the parallel-jaw gripper (`with_gripper`), as the grasp task drives it."""

    finger_force: float  # N per finger
    gripper_speed: float  # m/s of pad distance
    finger_tip_depth: float  # m below the TCP along the tool axis
    finger_thickness: float  # m
    link_indices: dict[str, int]

    def command_gripper_width(self, width: float) -> None:
        """Drive both fingers towards a pad distance (m)."""

    def finger_contacts(self, body_id: int) -> tuple[bool, bool]:
        """Whether the left and right finger touch a body."""

    def finger_contact_normals(self, body_id: int) -> tuple[list[float], list[float]]:
        """The vertical component of each contact normal (on the body, towards the finger)
        of the left and the right finger with a body; empty where a finger does not touch."""

    def inverse_kinematics(self, tcp_position, tcp_orientation, rest_positions=None) -> np.ndarray:
        """Joint positions that put the TCP at a pose (for the task's home pose)."""


# ------------------------------------------------------------------------ the arm
class UrdfArm:
    """The arm of a `RobotDescription` in a `BulletSim`, fixed at `base_position` (the base
    frame is the world frame rotated by nothing and shifted by that position).

    Args:
        sim: the simulation that owns the body.
        description: which arm (URDF, joint and link names, TCP frame).
        with_gripper: load the variant with the description's gripper on the flange.
        base_position: where the base link stands, m.
    """

    def __init__(
        self,
        sim: BulletSim,
        description: RobotDescription,
        with_gripper: bool = False,
        base_position=(0.0, 0.0, 0.0),
    ):
        self.sim = sim
        self.client = sim.client
        self.description = description
        self.joint_names = tuple(description.joint_names)
        self.joint_count = len(self.joint_names)
        self.with_gripper = with_gripper
        self.base_position = np.asarray(base_position, dtype=float)
        self.urdf = urdf = description.urdf_for(with_gripper)
        gripper = description.gripper if with_gripper else None
        # Merging the fixed links (flange, palm, TCP frame) into the last arm link leaves
        # the solver fewer bodies: about a quarter off each physics step. The TCP is then
        # that link's frame shifted by the fixed offset read from the same URDF.
        self.body_id = sim.load_urdf(
            urdf, position=base_position, fixed_base=True, flags=pybullet.URDF_MERGE_FIXED_LINKS
        )
        self.flange_offset = fixed_offset(urdf, description.tcp_joints)
        self.tcp_offset = fixed_offset(urdf, gripper.tcp_joints) if gripper else self.flange_offset
        self._tcp_offset_list = self.tcp_offset.tolist()

        joints, links = {}, {}
        for index in range(self.client.getNumJoints(self.body_id)):
            info = self.client.getJointInfo(self.body_id, index)
            joints[info[1].decode()] = info
            links[info[12].decode()] = index
        missing = [n for n in self.joint_names if n not in joints]
        if missing:
            raise ValueError(f"{urdf} has no joint {missing[0]} (robot {description.name})")
        if description.last_link not in links:
            raise ValueError(
                f"{urdf} has no link {description.last_link} (robot {description.name})"
            )
        self.arm_joint_indices = [joints[name][0] for name in self.joint_names]
        self.limits = JointLimits(
            lower=np.array([joints[n][8] for n in self.joint_names]),
            upper=np.array([joints[n][9] for n in self.joint_names]),
            velocity=np.array([joints[n][11] for n in self.joint_names]),
            effort=np.array([joints[n][10] for n in self.joint_names]),
        )
        # Plain Python lists: the motor loop runs every control step.
        self._arm_efforts = self.limits.effort.tolist()
        self._joint_lower = self.limits.lower.tolist()
        self._joint_upper = self.limits.upper.tolist()
        # Extra motor arguments (gains) a randomised episode sets; empty: PyBullet's defaults.
        self._motor_options: dict[str, list[float]] = {}
        self._arm_speeds = self.limits.velocity.tolist()
        self.last_arm_link_index = links[description.last_link]
        self.link_indices = links
        if gripper:
            fingers = gripper.finger_joint_names
            self.finger_joint_indices = [joints[name][0] for name in fingers]
            self.finger_link_indices = [joints[name][0] for name in fingers]
            self.finger_travel = float(joints[fingers[0]][9])
            self.finger_force = float(joints[fingers[0]][10])
            self.finger_speed = float(joints[fingers[0]][11])
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
        # state after a step without a second read (see state_after_step); the arm's
        # speeds as clamped, None where none was.
        self._read_after_step: tuple[int, tuple, list[float] | None] | None = None
        sim.post_step_hooks.append(self._limit_joint_speeds)

    def _limit_joint_speeds(self) -> None:
        """Clamp each arm joint's speed to its datasheet limit, and record in
        `peak_speed_fraction` the largest |speed| / limit met before clamping (inf for a
        non-finite speed, which is left alone so that blow-up detection sees it); whoever
        reads the peak clears it."""
        states = self.client.getJointStates(self.body_id, self._state_joint_indices)
        # Nearly every step finds every speed within its limit: a check that makes nothing
        # first, and the speeds' list only where one is clamped (state_after_step makes it
        # otherwise, once per control step). zip stops at the arm joints (_arm_speeds).
        for state, limit in zip(states, self._arm_speeds):
            if not -limit <= state[1] <= limit:
                break
        else:
            self._read_after_step = (self.sim.physics_steps, states, None)
            return
        velocities = [state[1] for state in states[: self.joint_count]]
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
        gripper = self.description.gripper
        root = ElementTree.parse(asset_path("urdf", gripper.urdf)).getroot()
        joint_z = float(
            root.find(f"joint[@name='{gripper.finger_joint_names[0]}']/origin")
            .get("xyz")
            .split()[2]
        )
        collision = root.find(f"link[@name='{gripper.finger_link_name}']/collision")
        box_z = float(collision.find("origin").get("xyz").split()[2])
        size = [float(v) for v in collision.find("geometry/box").get("size").split()]
        tcp_z = float(
            root.find(f"joint[@name='{gripper.tcp_joints[-1]}']/origin").get("xyz").split()[2]
        )
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
        return self._unpack_states(states, [state[1] for state in states[: self.joint_count]])

    def state_after_step(self) -> tuple[np.ndarray, np.ndarray, float]:
        """`joint_and_gripper_state()` right after `BulletSim.step`, as the speed clamp read
        it after the last physics step (with the speeds it clamped): every state read
        copies PyBullet's whole state buffer (about 30 KB), so one read fewer per control
        step counts. Call it only between a step and any other change to the robot (an env
        does, in its step); after a reset, or with no step since, it reads afresh."""
        read = self._read_after_step
        if read is None or read[0] != self.sim.physics_steps:
            return self.joint_and_gripper_state()
        return self._unpack_states(read[1], self.arm_speeds_after_step())

    def arm_speeds_after_step(self) -> list[float] | None:
        """The arm joints' speeds (rad/s) as the speed clamp left them after the latest
        physics step, from its read; None where that read is not current (no step since a
        reset or teleport)."""
        read = self._read_after_step
        if read is None or read[0] != self.sim.physics_steps:
            return None
        states, clamped_velocities = read[1], read[2]
        if clamped_velocities is None:
            return [state[1] for state in states[: self.joint_count]]
        return clamped_velocities

    def _unpack_states(self, states, arm_velocities) -> tuple[np.ndarray, np.ndarray, float]:
        count = self.joint_count
        positions = np.array([state[0] for state in states[:count]])
        width = states[count][0] + states[count + 1][0] if self.with_gripper else 0.0
        return positions, np.array(arm_velocities), width

    def applied_torques(self) -> np.ndarray:
        """Motor torques applied in the last physics step (N m)."""
        states = self.client.getJointStates(self.body_id, self.arm_joint_indices)
        return np.array([s[3] for s in states])

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (m) and orientation quaternion (x, y, z, w) in the base frame."""
        # (computeLinkVelocity=0, computeForwardKinematics=1) passed by position: PyBullet
        # parses keywords slower, and this runs every control step.
        state = self.client.getLinkState(self.body_id, self.last_arm_link_index, 0, 1)
        position, orientation = pybullet.multiplyTransforms(
            state[4], state[5], self._tcp_offset_list, (0.0, 0.0, 0.0, 1.0)
        )
        return np.asarray(position) - self.base_position, np.asarray(orientation)

    def finger_contacts(self, body_id: int) -> tuple[bool, bool]:
        """Whether the left and right finger touch `body_id`."""
        left, right = self.finger_contact_normals(body_id)
        return bool(left), bool(right)

    def finger_contact_normals(self, body_id: int) -> tuple[list[float], list[float]]:
        """The vertical component of each contact normal (on `body_id`, towards the
        finger) of the left and the right finger with `body_id`, from one query."""
        left, right = self.finger_link_indices
        normals: dict[int, list[float]] = {left: [], right: []}
        # One query for all of the robot's contacts with the body; field 3 is our link,
        # field 7 the contact normal on the body, pointing from it to our link.
        for point in self.client.getContactPoints(self.body_id, body_id):
            if point[3] in normals:
                normals[point[3]].append(point[7][2])
        return normals[left], normals[right]

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
        targets = np.asarray(targets, dtype=float)
        if targets.shape != (self.joint_count,):
            raise ValueError(
                f"expected {self.joint_count} joint position targets, got shape {targets.shape}"
            )
        return np.array(self.command_setpoint(targets.tolist()))

    def command_setpoint(self, setpoint: list[float]) -> list[float]:
        """`command_joint_positions` for one robot period's setpoint as plain floats (the
        command stream's, 8 times per environment step): clipped to the joint range in
        floats, which gives numpy's minimum/maximum numbers without two array round trips.
        Returns what was sent (a new list)."""
        # `x < low` and `x > high` are False for NaN, so a NaN passes as numpy's would.
        clipped = [
            low if x < low else (high if x > high else x)
            for x, low, high in zip(setpoint, self._joint_lower, self._joint_upper, strict=True)
        ]
        self.client.setJointMotorControlArray(
            self.body_id,
            self.arm_joint_indices,
            pybullet.POSITION_CONTROL,
            targetPositions=clipped,
            forces=self._arm_efforts,
            **self._motor_options,
        )
        return clipped

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
            options["positionGains"] = [float(position_gain)] * self.joint_count
        if velocity_gain is not None:
            options["velocityGains"] = [float(velocity_gain)] * self.joint_count
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
        # IK solves for the last arm link's frame: step back from the TCP along the fixed offset.
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
        return limits.clip(np.asarray(solution[: self.joint_count]))

    def pybullet_jacobian(self, joint_positions: np.ndarray) -> np.ndarray:
        """PyBullet's own 6 x n Jacobian at the TCP (linear rows, then angular): the
        reference the numpy Jacobian is tested against."""
        # The finger positions do not move the last arm link; any value serves.
        extra = [self.finger_travel] * 2 if self.with_gripper else []
        zeros = [0.0] * (self.joint_count + len(extra))
        linear, angular = self.client.calculateJacobian(
            self.body_id,
            self.last_arm_link_index,
            self._tcp_offset_list,
            np.asarray(joint_positions, dtype=float).tolist() + extra,
            zeros,
            zeros,
        )
        return np.array(linear + angular)[:, : self.joint_count]

    # ------------------------------------------------------------ description
    def kinematic_chain(self) -> dict:
        """The arm's joint frames from the URDF, as the deploy runtime's numpy forward
        kinematics reads them: each joint's origin relative to its parent link, its axis,
        and the fixed offset from the last arm link to the TCP."""
        root = ElementTree.parse(asset_path("urdf", self.urdf)).getroot()
        joints = []
        # The chain is the actuated joints alone: each must hang from the link the one
        # before moves (the first from the root link), or a fixed joint between them would
        # be missing from the controller's kinematics.
        children = {j.find("child").get("link") for j in root.findall("joint")}
        parent_link = next(
            link.get("name") for link in root.findall("link") if link.get("name") not in children
        )
        for name in self.joint_names:
            element = root.find(f"joint[@name='{name}']")
            if element.find("parent").get("link") != parent_link:
                raise ValueError(
                    f"{self.urdf}: joint {name} hangs from {element.find('parent').get('link')}, "
                    f"not from {parent_link}: the arm's joints must form one serial chain "
                    f"(robot {self.description.name})"
                )
            parent_link = element.find("child").get("link")
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
