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
"""

from __future__ import annotations

import re

import numpy as np

from iiwa_rl.envs.randomization import Perturbation
from iiwa_rl.sim.client import _resolved_urdf, asset_path
from iiwa_rl.sim.iiwa14 import ARM_JOINT_NAMES, FLANGE_JOINTS, HOME_JOINT_POSITIONS
from iiwa_rl.sim.robot import fixed_offset

# MuJoCo steps 1 ms: five per 5 ms robot period, with the implicit-in-velocity integrator
# the stiff servos of the light wrist joints stay stable.
DEFAULT_TIMESTEP_S = 0.001
# Servo stiffness per axis, N m/rad, critically damped. The big axes follow a ramp at
# interpolator speed with a lag like that of PyBullet's motor (0.01 to 0.03 rad).
SERVO_STIFFNESS = (20000.0, 20000.0, 8000.0, 8000.0, 2000.0, 1000.0, 1000.0)
SERVO_DAMPING_RATIO = 1.0
# The wrist links weigh little (joint 7 turns about 0.01 kg m^2): without some reflected
# rotor inertia a 500 N m/rad servo would ring at 1 ms. The real iiwa's geared rotors add
# far more than this.
ARMATURE = 0.01  # kg m^2 per joint


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


def build_arm_model(timestep_s: float = DEFAULT_TIMESTEP_S):
    """The compiled MjModel of assets/urdf/iiwa14.urdf with one position servo per joint."""
    mujoco = _import_mujoco()
    text = open(_resolved_urdf(asset_path("urdf", "iiwa14.urdf"))).read()
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
        if body.name.startswith("iiwa_link") and body.name != "iiwa_link_0":
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
        actuator.set_to_position(kp=SERVO_STIFFNESS[axis], dampratio=SERVO_DAMPING_RATIO)
        actuator.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuator.forcerange = [-effort[axis], effort[axis]]
    return spec.compile()


def _datasheet_efforts() -> list[float]:
    from iiwa_deploy.config import load_robot_config

    return [float(v) for v in load_robot_config().effort]


class MujocoPlant:
    """The arm in MuJoCo, stepped one robot period at a time by whoever owns the clock."""

    # The arm alone: no grasp scene here yet (SimRobot then speaks protocol version 1).
    grasp_env = None

    def __init__(self, period_s: float, timestep_s: float = DEFAULT_TIMESTEP_S):
        mujoco = _import_mujoco()
        self._mujoco = mujoco
        per_period = period_s / timestep_s
        if round(per_period) < 1 or abs(per_period - round(per_period)) > 1e-6:
            raise ValueError(
                f"MuJoCo's {timestep_s} s step is not a whole fraction of the {period_s} s period"
            )
        self.period_s = period_s
        self.substeps = int(round(per_period))
        self.model = build_arm_model(timestep_s)
        self.data = mujoco.MjData(self.model)
        model = self.model
        self.joint_ids = [
            mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ARM_JOINT_NAMES
        ]
        self.qpos_index = np.array([model.jnt_qposadr[j] for j in self.joint_ids])
        self.dof_index = np.array([model.jnt_dofadr[j] for j in self.joint_ids])
        self.link7 = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "iiwa_link_7")
        self.flange_in_link7 = fixed_offset("iiwa14.urdf", FLANGE_JOINTS)
        self._nominal = {
            "body_mass": model.body_mass.copy(),
            "body_inertia": model.body_inertia.copy(),
            "body_ipos": model.body_ipos.copy(),
            "dof_damping": model.dof_damping.copy(),
            "dof_frictionloss": model.dof_frictionloss.copy(),
            "actuator_gainprm": model.actuator_gainprm.copy(),
            "actuator_biasprm": model.actuator_biasprm.copy(),
            "actuator_forcerange": model.actuator_forcerange.copy(),
            "jnt_actfrcrange": model.jnt_actfrcrange.copy(),
            "body_gravcomp": model.body_gravcomp.copy(),
        }
        self.reset(HOME_JOINT_POSITIONS)

    # ------------------------------------------------------------------ Plant
    def reset(self, initial_positions: np.ndarray) -> None:
        mujoco, data = self._mujoco, self.data
        mujoco.mj_resetData(self.model, data)
        q = np.asarray(initial_positions, dtype=float)
        data.qpos[self.qpos_index] = q
        data.ctrl[:] = q
        mujoco.mj_forward(self.model, data)

    def apply(self, setpoint_positions: np.ndarray) -> None:
        self.data.ctrl[:] = setpoint_positions

    def step(self, dt: float) -> tuple[np.ndarray, np.ndarray]:
        if abs(dt - self.period_s) > 1e-9:
            raise ValueError(f"MujocoPlant steps {self.period_s} s periods, asked for {dt} s")
        self._mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        return self.joint_state()

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.qpos[self.qpos_index].copy(), self.data.qvel[self.dof_index].copy()

    def close(self) -> None:
        pass

    # ------------------------------------------------------------ kinematics
    def tcp_position(self) -> np.ndarray:
        """The flange centre in the base frame (the reach env's TCP), from the current state."""
        data = self.data
        rotation = data.xmat[self.link7].reshape(3, 3)
        return data.xpos[self.link7] + rotation @ self.flange_in_link7

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
        model.actuator_gainprm[:, 0] *= perturbation.stiffness_scale
        model.actuator_biasprm[:, 1] *= perturbation.stiffness_scale
        model.actuator_biasprm[:, 2] *= perturbation.damping_scale
        model.actuator_forcerange[:] *= perturbation.force_limit_scale
        model.jnt_actfrcrange[self.joint_ids] *= perturbation.force_limit_scale
