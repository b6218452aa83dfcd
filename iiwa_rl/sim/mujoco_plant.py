"""The iiwa 14 in MuJoCo: a second physics engine behind the deploy runtime's `Plant`
interface (`reset(q0)`, `apply(setpoint)`, `step(dt) -> (q, qd)`).

The model is built from the project's own URDF (assets/urdf/iiwa14.urdf, the file PyBullet
loads) by MuJoCo's URDF compiler, so the kinematics, masses and inertias are the same
numbers. What differs on purpose is the joint-level controller: PyBullet's position motor
is a velocity constraint in its solver; here each joint gets MuJoCo's own position actuator
(a PD servo, force = kp (setpoint - q) - kv qd) clipped to the datasheet torque, with the
arm's weight compensated through the actuators (gravcomp, as the KUKA controller's model
does), so a policy meets a servo that tracks differently from the one it trained with.

`perturb(Perturbation)` applies the arm's randomisation terms (masses, payload, friction,
damping, servo gains and torque limits) to the model, for the robustness suite.

For a grasp (`MujocoPlant.for_contract` of a grasp contract, or `grasp=GraspScene(...)`) the
model is the grasp env's scene: the arm with the parallel gripper from
assets/urdf/iiwa14_gripper.urdf, the table of table.urdf where the env stands it, and the
cube of cube.urdf (its mass and the frictions the PyBullet scene gives each pair of bodies).
The fingers are driven by MuJoCo's own actuators (see `_add_gripper_drive`). The plant then
has what the controller's grasp session needs, as the PyBullet plant has: the gripper
(`apply_gripper`, `gripper_state` with its finger contacts), the cube's true pose for a
simulated camera (`object_pose`) and the env's episode start (`place_object`).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import numpy as np

from iiwa_rl.envs.base import quaternion_yaw
from iiwa_rl.envs.randomization import Perturbation
from iiwa_rl.envs.tasks.grasp import TABLE_POSITION
from iiwa_rl.sim.client import _resolved_urdf, asset_path
from iiwa_rl.sim.iiwa14 import ARM_JOINT_NAMES, FLANGE_JOINTS, HOME_JOINT_POSITIONS, IIWA14
from iiwa_rl.sim.robot import fixed_offset

FINGER_JOINT_NAMES = IIWA14.gripper.finger_joint_names

# MuJoCo steps 1 ms: five per 5 ms robot period, with the implicit-in-velocity integrator
# the stiff servos of the light wrist joints stay stable.
DEFAULT_TIMESTEP_S = 0.001
# Servo stiffness per axis, N m/rad, critically damped. The big axes follow a ramp at
# interpolator speed with a lag like that of PyBullet's motor (0.01 to 0.03 rad).
SERVO_STIFFNESS = (20000.0, 20000.0, 8000.0, 8000.0, 2000.0, 1000.0, 1000.0)
# Each servo's damping kv = 2 ratio sqrt(kp I), I the axis' inertia (links, armature and, in
# the grasp scene, the gripper) at the home pose, where every episode starts and which the
# task poses stay near (_damp_servos_at). MuJoCo's own `dampratio` takes I from the
# compiler's reference pose instead, the arm stretched straight up, where axes 1 and 3 turn
# a tenth of the inertia they turn at home: its "critically damped" servos had ratios of
# 0.22, 0.59, 0.20 and 0.43 on axes 1 to 4 at home (measured), and the arm rang about its
# setpoints; the reach policies scored 67 % and 58 % over 100 goals through the controller.
# (Before the base's contact with link 1 was excluded, that contact's friction had damped
# axis 1: 97 % and 95 %.)
SERVO_DAMPING_RATIO = 1.0
# The wrist links weigh little (joint 7 turns about 0.01 kg m^2): without some reflected
# rotor inertia a 500 N m/rad servo would ring at 1 ms. The real iiwa's geared rotors add
# far more than this.
ARMATURE = 0.01  # kg m^2 per joint

# ---------------------------------------------------------------- the grasp scene's physics
# MuJoCo's contacts are soft constraints; these choices make them behave like the rigid,
# dry-friction contacts of a real cube between rubber pads, not like the engine's defaults.
#
# Friction cone: elliptic (the true Coulomb cone; the default pyramid is its linearisation)
# with impratio 10. MuJoCo's friction constraints are soft like its normal ones, so at the
# default impratio 1 a squeezed object creeps: it slides slowly under any load, where static
# friction would hold it (the held cube here: 0.42 mm down the pads in 2 s, at 2 N as at
# 40 N of squeeze; 0.04 mm with impratio 10). impratio makes the friction constraints that
# many times stiffer than the normal ones (MuJoCo's documented remedy for slip in grasps)
# without changing the friction limit: a cube pulled harder than mu N still slides.
FRICTION_CONE_IMPRATIO = 10.0
# The contacts of the pads, the cube and the table: stiff, as rubber pads on a plastic cube on
# a wooden table are. solref: a time constant of 4 ms (critically damped), MuJoCo's stiffest
# stable choice at the 1 ms step (it asks for at least two steps); solimp: full impedance
# (0.95 to 0.99) reached within 1 mm of penetration. Measured in this scene: a 40 N squeeze
# sinks each pad 0.14 mm into the cube (a 3 mm rubber pad, about 1.5 MPa over the 20 x 45 mm
# it touches, gives 0.1 mm), and the cube pressed onto the table with 500 N sinks 0.55 mm
# (plastic on wood would give less). MuJoCo's defaults (20 ms; 0.9 to 0.95) are mush here:
# 3.4 mm per pad at 40 N, and a 500 N press pushes the cube 25 mm, half its height, into the
# table. (The arm presses that hard: its position servos push a finger the policy commands
# below the table, or onto the cube, with some hundreds of N.)
CONTACT_SOLREF = (0.004, 1.0)
CONTACT_SOLIMP = (0.95, 0.99, 0.001, 0.5, 2.0)
# condim: a box pressed on a box is a patch, which MuJoCo's box-box collider represents by
# up to eight contact points over the overlap, so the patch already resists turning about the
# normal (the spread of point frictions) and rolling (the spread of normal forces). condim 3
# (sliding friction at each point) is then the whole patch; torsional friction on top of it
# (condim 4) would count the patch twice.
BOX_CONDIM = 3

# The gripper's drive. A parallel gripper's controller moves the fingers at a set speed to a
# set width and squeezes with at most a set force; that is each finger's MuJoCo actuator
# here: an integrated-velocity servo (intvelocity: the command is the finger speed, the
# actuator's own activation integrates it into the position setpoint, clamped to the finger
# travel) with a stiff position loop clipped to the commanded force. Closing on a cube, the
# setpoint runs on to the commanded width, the loop's force saturates and the finger
# squeezes with the commanded force, as a force-limited real gripper does.
FINGER_STIFFNESS = 10000.0  # N/m: the rated 40 N at 4 mm between setpoint and finger
FINGER_DAMPING_RATIO = 1.0


@dataclass(frozen=True)
class GraspScene:
    """What the grasp scene is built from, the contract's figures: the cube's edge (m), the
    arm's home pose where every episode starts (rad), and the area the cube is placed in
    (x, y low and high, m; the plant starts with the cube in its middle)."""

    cube_size_m: float
    home_joint_positions: np.ndarray
    cube_area_low: np.ndarray
    cube_area_high: np.ndarray

    @classmethod
    def from_contract(cls, contract) -> GraspScene:
        if contract.grasp is None:
            raise ValueError("the contract has no grasp section: there is no grasp scene")
        task = contract.grasp
        return cls(
            float(task.object_size_m),
            np.asarray(contract.home_joint_positions, dtype=float),
            np.asarray(task.object_area_low, dtype=float),
            np.asarray(task.object_area_high, dtype=float),
        )


@dataclass(frozen=True)
class _UrdfBox:
    """A one-box link of the project's URDFs: its size and origin (m), mass (kg) and the
    lateral friction coefficient of its <contact>."""

    size: np.ndarray
    origin: np.ndarray
    mass: float
    lateral_friction: float


def _urdf_box(urdf: str, link: str) -> _UrdfBox:
    root = ElementTree.parse(asset_path("urdf", urdf)).getroot()
    element = root.find(f"link[@name='{link}']")
    collision = element.find("collision")
    contact = element.find("contact")
    mass = element.find("inertial/mass")
    return _UrdfBox(
        size=np.array([float(v) for v in collision.find("geometry/box").get("size").split()]),
        origin=np.array([float(v) for v in collision.find("origin").get("xyz").split()]),
        mass=float(mass.get("value")) if mass is not None else 0.0,
        lateral_friction=float(contact.find("lateral_friction").get("value")),
    )


def mujoco_available() -> bool:
    try:
        import mujoco  # noqa: F401
    except ImportError:
        return False
    return True


def _import_mujoco():
    try:
        import mujoco
    except ImportError as error:  # an optional engine: say how to get it
        raise RuntimeError(
            "the MuJoCo plant needs the `mujoco` package: pip install 'iiwa-rl[mujoco]'"
        ) from error
    return mujoco


def build_model(timestep_s: float = DEFAULT_TIMESTEP_S, grasp: GraspScene | None = None):
    """The compiled MjModel: assets/urdf/iiwa14.urdf with one position servo per joint, or
    for a grasp iiwa14_gripper.urdf with the gripper's drive, the table and the cube."""
    mujoco = _import_mujoco()
    urdf = "iiwa14_gripper.urdf" if grasp is not None else "iiwa14.urdf"
    text = open(_resolved_urdf(asset_path("urdf", urdf))).read()
    # MuJoCo's URDF extension: keep the mesh paths (absolute, pointing into pybullet_data),
    # drop the visual meshes and keep every link a body of its own.
    compiler = (
        '<mujoco><compiler strippath="false" discardvisual="true" fusestatic="false"/></mujoco>'
    )
    text = re.sub(r"(<robot [^>]*>)", r"\1" + compiler, text, count=1)
    spec = mujoco.MjSpec.from_string(text)
    spec.option.timestep = timestep_s
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    effort = _datasheet_efforts()
    for body in spec.bodies:
        # The robot's links (the table and the cube are added below): the arm's weight, and
        # the gripper's (the tool's load data a real iiwa is given), is compensated; an
        # object in the hand is not (the controller does not know it).
        if body.name not in ("world", "iiwa_link_0"):
            body.gravcomp = 1.0
    for axis, name in enumerate(ARM_JOINT_NAMES):
        joint = spec.joint(name)
        joint.actgravcomp = True
        joint.armature = ARMATURE
        joint.actfrclimited = mujoco.mjtLimited.mjLIMITED_TRUE
        joint.actfrcrange = [-effort[axis], effort[axis]]
        actuator = spec.add_actuator()
        actuator.name = f"servo_{axis + 1}"
        actuator.target = name
        actuator.trntype = mujoco.mjtTrn.mjTRN_JOINT
        actuator.set_to_position(kp=SERVO_STIFFNESS[axis])  # kv: _damp_servos_at
        actuator.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuator.forcerange = [-effort[axis], effort[axis]]
    # The base's and the first link's meshes overlap where the first joint's bearing is:
    # MuJoCo leaves a body welded to the world in contact with its child (PyBullet does not),
    # which rubbed joint 1 with a centimetre of penetration.
    spec.add_exclude(bodyname1="iiwa_link_0", bodyname2="iiwa_link_1")
    if grasp is not None:
        _add_gripper_drive(spec, mujoco)
        _add_table_and_cube(spec, mujoco, grasp)
    model = spec.compile()
    home = HOME_JOINT_POSITIONS if grasp is None else grasp.home_joint_positions
    _damp_servos_at(model, mujoco, np.asarray(home, dtype=float))
    return model


def servo_inertias(model, mujoco, joint_positions: np.ndarray) -> np.ndarray:
    """Each arm axis' own inertia (kg m^2, the joint-space inertia matrix's diagonal, the
    armature included) with the arm at `joint_positions`."""
    data = mujoco.MjData(model)
    joints = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ARM_JOINT_NAMES]
    data.qpos[[model.jnt_qposadr[j] for j in joints]] = joint_positions
    mujoco.mj_forward(model, data)
    inertia = np.zeros((model.nv, model.nv))
    mujoco.mj_fullM(model, data, inertia)
    return np.diag(inertia)[[model.jnt_dofadr[j] for j in joints]]


def _damp_servos_at(model, mujoco, joint_positions: np.ndarray) -> None:
    """The arm servos' damping for SERVO_DAMPING_RATIO at `joint_positions` (see there)."""
    inertia = servo_inertias(model, mujoco, joint_positions)
    arm = slice(0, len(ARM_JOINT_NAMES))
    stiffness = model.actuator_gainprm[arm, 0]
    # Position servo: force = kp ctrl + biasprm[1] q + biasprm[2] qd, biasprm[2] = -kv.
    model.actuator_biasprm[arm, 2] = -2.0 * SERVO_DAMPING_RATIO * np.sqrt(stiffness * inertia)


def build_arm_model(timestep_s: float = DEFAULT_TIMESTEP_S):
    """The compiled MjModel of the arm alone (the reach)."""
    return build_model(timestep_s)


def _add_gripper_drive(spec, mujoco) -> None:
    """Each finger's actuator (see FINGER_STIFFNESS): an intvelocity servo over the finger's
    travel, its force clipped to the finger's rated force (the URDF's effort)."""
    root = ElementTree.parse(asset_path("urdf", "iiwa14_gripper.urdf")).getroot()
    for side, name in zip(("left", "right"), FINGER_JOINT_NAMES, strict=True):
        limit = root.find(f"joint[@name='{name}']/limit")
        travel, rated_force = float(limit.get("upper")), float(limit.get("effort"))
        actuator = spec.add_actuator()
        actuator.name = f"finger_{side}"
        actuator.target = name
        actuator.trntype = mujoco.mjtTrn.mjTRN_JOINT
        actuator.set_to_intvelocity(kp=FINGER_STIFFNESS, dampratio=FINGER_DAMPING_RATIO)
        actuator.actlimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuator.actrange = [0.0, travel]
        actuator.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuator.forcerange = [-rated_force, rated_force]
        # The command (finger speed, m/s) is bounded by the plant to the commanded speed.
        actuator.ctrllimited = mujoco.mjtLimited.mjLIMITED_FALSE


def _add_table_and_cube(spec, mujoco, grasp: GraspScene) -> None:
    """The table of table.urdf where the grasp env stands it, and the cube of cube.urdf (the
    contract's size, the URDF's mass; MuJoCo derives the inertia from mass and box as
    PyBullet does), with the contact pairs of the PyBullet scene."""
    table = _urdf_box("table.urdf", "table")
    cube = _urdf_box("cube.urdf", "cube")
    pad = _urdf_box("iiwa14_gripper.urdf", "gripper_finger_left")
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = FRICTION_CONE_IMPRATIO
    box = mujoco.mjtGeom.mjGEOM_BOX
    spec.worldbody.add_geom(
        name="table",
        type=box,
        size=table.size / 2.0,
        pos=np.asarray(TABLE_POSITION) + table.origin,
    )
    body = spec.worldbody.add_body(name="cube", pos=[0.0, 0.0, grasp.cube_size_m / 2.0])
    body.add_freejoint(name="cube")
    body.add_geom(
        name="cube",
        type=box,
        size=[grasp.cube_size_m / 2.0] * 3,
        mass=cube.mass,
    )
    for side in ("left", "right"):
        spec.body(f"gripper_finger_{side}").first_geom().name = f"finger_{side}"
    # Each pair of materials its own friction coefficient: PyBullet's scene multiplies the two
    # bodies' URDF coefficients (finger on cube 1.5 x 1.0, finger on table 1.5 x 0.8, cube on
    # table 1.0 x 0.8); MuJoCo would take the larger of the two, so the pairs say it here
    # (explicit pairs; the same bodies' automatic contacts are excluded). Every other contact
    # (the arm's links on the table or the cube) keeps MuJoCo's defaults.
    pairs = [
        ("finger_left", "cube", "gripper_finger_left", "cube", pad, cube),
        ("finger_right", "cube", "gripper_finger_right", "cube", pad, cube),
        ("finger_left", "table", "gripper_finger_left", "world", pad, table),
        ("finger_right", "table", "gripper_finger_right", "world", pad, table),
        ("cube", "table", "cube", "world", cube, table),
    ]
    for geom1, geom2, body1, body2, material1, material2 in pairs:
        sliding = material1.lateral_friction * material2.lateral_friction
        pair = spec.add_pair(name=f"{geom1}_on_{geom2}", geomname1=geom1, geomname2=geom2)
        pair.condim = BOX_CONDIM
        # (tangent 1, tangent 2, torsional, rolling 1, rolling 2): condim 3 reads the first two.
        pair.friction = [sliding, sliding, 0.0, 0.0, 0.0]
        pair.solref = list(CONTACT_SOLREF)
        pair.solimp = list(CONTACT_SOLIMP)
        spec.add_exclude(bodyname1=body1, bodyname2=body2)


def _datasheet_efforts() -> list[float]:
    from iiwa_deploy.config import load_robot_config

    return [float(v) for v in load_robot_config().effort]


class MujocoPlant:
    """The arm in MuJoCo, stepped one robot period at a time by whoever owns the clock; with
    `grasp` the grasp env's scene (see the module docstring)."""

    def __init__(
        self,
        period_s: float,
        timestep_s: float = DEFAULT_TIMESTEP_S,
        grasp: GraspScene | None = None,
    ):
        mujoco = _import_mujoco()
        self._mujoco = mujoco
        per_period = period_s / timestep_s
        if round(per_period) < 1 or abs(per_period - round(per_period)) > 1e-6:
            raise ValueError(
                f"MuJoCo's {timestep_s} s step is not a whole fraction of the {period_s} s period"
            )
        self.period_s = period_s
        self.substeps = int(round(per_period))
        self.grasp = grasp
        self.model = build_model(timestep_s, grasp)
        self.data = mujoco.MjData(self.model)
        model = self.model
        self.joint_ids = [
            mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ARM_JOINT_NAMES
        ]
        self.qpos_index = np.array([model.jnt_qposadr[j] for j in self.joint_ids])
        self.dof_index = np.array([model.jnt_dofadr[j] for j in self.joint_ids])
        self.arm_actuators = slice(0, len(ARM_JOINT_NAMES))
        self.link7 = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "iiwa_link_7")
        self.flange_in_link7 = fixed_offset("iiwa14.urdf", FLANGE_JOINTS)
        # The TCP: the flange for the arm alone (the reach env's), the gripper's TCP frame
        # between the finger tips for the grasp (the grasp env's).
        self.tcp_in_link7 = (
            self.flange_in_link7
            if grasp is None
            else fixed_offset(IIWA14.gripper.urdf, IIWA14.gripper.tcp_joints)
        )
        arm = self.arm_actuators
        self._nominal = {
            "body_mass": model.body_mass.copy(),
            "body_inertia": model.body_inertia.copy(),
            "body_ipos": model.body_ipos.copy(),
            "dof_damping": model.dof_damping.copy(),
            "dof_frictionloss": model.dof_frictionloss.copy(),
            "jnt_actfrcrange": model.jnt_actfrcrange.copy(),
            "body_gravcomp": model.body_gravcomp.copy(),
        }
        # The arm's servos only: the gripper's force limit is its command's (apply_gripper).
        self._nominal_servos = {
            "actuator_gainprm": model.actuator_gainprm[arm].copy(),
            "actuator_biasprm": model.actuator_biasprm[arm].copy(),
            "actuator_forcerange": model.actuator_forcerange[arm].copy(),
        }
        if grasp is not None:
            self._init_grasp_scene()
            self.place_object((grasp.cube_area_low + grasp.cube_area_high) / 2.0, 0.0)
        else:
            self.reset(HOME_JOINT_POSITIONS)

    @classmethod
    def for_contract(cls, contract, period_s: float) -> MujocoPlant:
        """The plant for a policy: a grasp contract gets the grasp scene (the contract's cube,
        every episode from the contract's home pose), a reach contract the arm alone."""
        grasp = GraspScene.from_contract(contract) if contract.grasp is not None else None
        return cls(period_s, grasp=grasp)

    @property
    def with_gripper(self) -> bool:
        """Whether the arm carries the gripper (a robot backend then speaks version 2)."""
        return self.grasp is not None

    # ------------------------------------------------------------------ Plant
    def reset(self, initial_positions: np.ndarray) -> None:
        """The arm at rest at `initial_positions`; in the grasp scene the cube and the
        gripper stay as they are (a new grasp episode is `place_object`)."""
        mujoco, data = self._mujoco, self.data
        q = np.asarray(initial_positions, dtype=float)
        if self.grasp is None:
            mujoco.mj_resetData(self.model, data)
        data.qpos[self.qpos_index] = q
        data.qvel[self.dof_index] = 0.0
        data.ctrl[self.arm_actuators] = q
        mujoco.mj_forward(self.model, data)

    def apply(self, setpoint_positions: np.ndarray) -> None:
        self.data.ctrl[self.arm_actuators] = setpoint_positions

    def step(self, dt: float) -> tuple[np.ndarray, np.ndarray]:
        if abs(dt - self.period_s) > 1e-9:
            raise ValueError(f"MujocoPlant steps {self.period_s} s periods, asked for {dt} s")
        if self.grasp is not None:
            self._drive_fingers()
        self._mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        return self.joint_state()

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.qpos[self.qpos_index].copy(), self.data.qvel[self.dof_index].copy()

    def close(self) -> None:
        pass

    # ------------------------------------------------------------ grasp scene
    def _init_grasp_scene(self) -> None:
        mujoco, model = self._mujoco, self.model

        def named(kind, name):
            return mujoco.mj_name2id(model, kind, name)

        finger_joints = [named(mujoco.mjtObj.mjOBJ_JOINT, n) for n in FINGER_JOINT_NAMES]
        self.finger_qpos_index = np.array([model.jnt_qposadr[j] for j in finger_joints])
        self.finger_dof_index = np.array([model.jnt_dofadr[j] for j in finger_joints])
        self.finger_actuators = np.array(
            [named(mujoco.mjtObj.mjOBJ_ACTUATOR, f"finger_{side}") for side in ("left", "right")]
        )
        self.finger_activation_index = model.actuator_actadr[self.finger_actuators]
        self.finger_travel = float(model.actuator_actrange[self.finger_actuators[0], 1])
        self.rated_finger_force = float(model.actuator_forcerange[self.finger_actuators[0], 1])
        self.finger_geoms = (
            named(mujoco.mjtObj.mjOBJ_GEOM, "finger_left"),
            named(mujoco.mjtObj.mjOBJ_GEOM, "finger_right"),
        )
        self.cube_geom = named(mujoco.mjtObj.mjOBJ_GEOM, "cube")
        self.cube_qpos_index = int(model.jnt_qposadr[named(mujoco.mjtObj.mjOBJ_JOINT, "cube")])
        # The gripper's command: the pad distance it goes to (m) and how fast (m/s).
        self._gripper_target_width = 2.0 * self.finger_travel
        self._gripper_speed = 0.0

    @property
    def max_gripper_width(self) -> float:
        return 2.0 * self.finger_travel

    def place_object(self, xy, yaw: float, seed: int = 0) -> None:
        """A new episode of the grasp scene, as the env's reset makes one: the arm at rest at
        home, the gripper open, the cube at rest on the table at (x, y) turned by `yaw`.
        (`seed` is the PyBullet plant's, whose env draws the episode's other terms from it;
        this scene has nothing else to draw.)"""
        if self.grasp is None:
            raise ValueError("this plant has no grasp scene (built for a reach contract)")
        xy = np.asarray(xy, dtype=float)
        if xy.shape != (2,) or not np.all(np.isfinite(xy)) or not math.isfinite(yaw):
            raise ValueError(f"a cube pose is finite x, y (m) and yaw (rad), got {xy}, {yaw}")
        mujoco, data = self._mujoco, self.data
        mujoco.mj_resetData(self.model, data)
        home = self.grasp.home_joint_positions
        data.qpos[self.qpos_index] = home
        data.ctrl[self.arm_actuators] = home
        # Open: fingers, their servos' setpoints and the command at the full travel, with the
        # rated force (a previous episode's command may have lowered it).
        data.qpos[self.finger_qpos_index] = self.finger_travel
        data.act[self.finger_activation_index] = self.finger_travel
        self._gripper_target_width = self.max_gripper_width
        force = self.rated_finger_force
        self.model.actuator_forcerange[self.finger_actuators] = [-force, force]
        cube = self.cube_qpos_index
        data.qpos[cube : cube + 3] = [xy[0], xy[1], self.grasp.cube_size_m / 2.0]
        data.qpos[cube + 3 : cube + 7] = [math.cos(yaw / 2.0), 0.0, 0.0, math.sin(yaw / 2.0)]
        mujoco.mj_forward(self.model, data)

    def object_pose(self) -> tuple[np.ndarray, float]:
        """The cube's true position (base frame = world frame, m) and yaw (rad)."""
        cube = self.cube_qpos_index
        w, x, y, z = self.data.qpos[cube + 3 : cube + 7]  # MuJoCo's order: scalar first
        return self.data.qpos[cube : cube + 3].copy(), quaternion_yaw((x, y, z, w))

    def apply_gripper(self, command) -> None:
        """A GripperCommand (width m, speed m/s, force N): the pad distance to go to, at
        most this fast, squeezing with at most this force (never above the rated force)."""
        self._gripper_target_width = min(max(float(command.width_m), 0.0), self.max_gripper_width)
        self._gripper_speed = max(float(command.speed_m_s), 0.0)
        force = min(max(float(command.force_n), 0.0), self.rated_finger_force)
        self.model.actuator_forcerange[self.finger_actuators] = [-force, force]

    def _drive_fingers(self) -> None:
        """Each finger servo's speed command for the coming period: towards the commanded
        half width, at most half the commanded pad speed, arriving at the period's end."""
        setpoints = self.data.act[self.finger_activation_index]
        speed = self._gripper_speed / 2.0
        to_go = self._gripper_target_width / 2.0 - setpoints
        self.data.ctrl[self.finger_actuators] = np.clip(to_go / self.period_s, -speed, speed)

    def finger_contacts(self) -> tuple[bool, bool]:
        """Whether the left and right finger touch the cube."""
        count = self.data.ncon
        if count == 0:
            return False, False
        geoms = self.data.contact.geom[:count]
        with_cube = geoms[(geoms == self.cube_geom).any(axis=1)]
        left, right = self.finger_geoms
        return bool((with_cube == left).any()), bool((with_cube == right).any())

    def gripper_state(self):
        """The gripper as a version 2 STATE reports it: the pad distance, the larger of the
        two finger drives' forces, the finger contacts (as tactile pads would sense them)."""
        from iiwa_deploy.protocol import GripperState

        data = self.data
        return GripperState.sensed(
            width_m=float(data.qpos[self.finger_qpos_index].sum()),
            force_n=float(np.max(np.abs(data.actuator_force[self.finger_actuators]))),
            contacts=self.finger_contacts(),
            moving=float(np.abs(data.qvel[self.finger_dof_index]).sum()) > 1e-3,
        )

    # ------------------------------------------------------------ kinematics
    def tcp_position(self) -> np.ndarray:
        """The TCP in the base frame (the flange, or the gripper's TCP), from the current
        state."""
        data = self.data
        rotation = data.xmat[self.link7].reshape(3, 3)
        return data.xpos[self.link7] + rotation @ self.tcp_in_link7

    def forward_kinematics(self, joint_positions: np.ndarray) -> np.ndarray:
        """TCP position for joint positions (m, base frame), leaving the state as it was."""
        mujoco, data = self._mujoco, self.data
        saved = data.qpos.copy()
        data.qpos[self.qpos_index] = joint_positions
        mujoco.mj_kinematics(self.model, data)
        position = self.tcp_position().copy()
        data.qpos[:] = saved
        mujoco.mj_kinematics(self.model, data)
        return position

    # ---------------------------------------------------------- randomisation
    def perturb(self, perturbation: Perturbation) -> None:
        """The arm's randomisation terms on the MuJoCo model, from its nominal figures (the
        timing and sensing terms live in `iiwa_rl.robustness.PerturbedPlant`)."""
        model, nominal = self.model, self._nominal
        for name, values in nominal.items():
            getattr(model, name)[:] = values
        arm = self.arm_actuators
        for name, values in self._nominal_servos.items():
            getattr(model, name)[arm] = values
        bodies = [
            self._mujoco.mj_name2id(model, self._mujoco.mjtObj.mjOBJ_BODY, f"iiwa_link_{i}")
            for i in range(1, 8)
        ]
        for axis, body in enumerate(bodies):
            scale = float(perturbation.link_mass_scales[axis])
            model.body_mass[body] *= scale
            model.body_inertia[body] *= scale
            # The controller compensates the weight its own (nominal) model predicts.
            model.body_gravcomp[body] = 1.0 / scale
        payload = perturbation.payload_mass
        if payload > 0.0:
            body = self.link7
            mass, com = model.body_mass[body], model.body_ipos[body].copy()
            point = self.flange_in_link7 + np.array([0.0, 0.0, perturbation.payload_com_z])
            combined = (mass * com + payload * point) / (mass + payload)
            # Parallel-axis rule about the new centre of mass, diagonal part (link 7's
            # inertial frame is the link frame: the URDF's inertia has no rotation).
            inertia = model.body_inertia[body].copy()
            for part_mass, part_com in ((mass, com), (payload, point)):
                offset = part_com - combined
                inertia += part_mass * (offset @ offset - offset * offset)
            model.body_mass[body] = mass + payload
            model.body_ipos[body] = combined
            model.body_inertia[body] = inertia
            # Gravity compensation stays the nominal arm's: the payload is not in the model
            # the KUKA controller compensates (a mass model entered wrongly, or not at all).
            model.body_gravcomp[body] = nominal["body_mass"][body] / (mass + payload)
        model.dof_frictionloss[self.dof_index] = perturbation.joint_friction
        if perturbation.joint_damping is not None:
            model.dof_damping[self.dof_index] = perturbation.joint_damping
        # Position servo: gainprm[0] = kp, biasprm[1] = -kp, biasprm[2] = -kv.
        model.actuator_gainprm[arm, 0] *= perturbation.stiffness_scale
        model.actuator_biasprm[arm, 1] *= perturbation.stiffness_scale
        model.actuator_biasprm[arm, 2] *= perturbation.damping_scale
        model.actuator_forcerange[arm] *= perturbation.force_limit_scale
        model.jnt_actfrcrange[self.joint_ids] *= perturbation.force_limit_scale
