"""An episode's randomised arm in PyBullet: link masses, a flange payload, joint friction and
damping, the position motors' stiffness, damping and torque limits, the finger pads' friction.

Every value is set from the arm's nominal (URDF) figures, read once, so episodes never
accumulate changes. PyBullet has no per-joint Coulomb friction and no way to move a link's
centre of mass, so two effects are forces applied before every physics step:
- joint friction: a torque of the drawn size against each joint's motion, on the child link
  about the joint axis and the opposite one on the parent. A revolute joint's axis is fixed
  in both links' frames, so the torques are applied in the links' own frames with axes
  computed once, and no link state is read per physics step (reading the seven links' frames
  and turning each axis into the world made the randomised reach step 1.6 times as costly
  as the nominal one);
- the payload: its mass is added to link 7 (so the arm's weight and translational inertia
  are right, and its inertia about link 7's centre of mass by the parallel-axis rule); the
  moment of its weight about that centre of mass, which the move of the mass point would
  otherwise lose, is applied as a torque on link 7.
"""

from __future__ import annotations

import math

import numpy as np
import pybullet

from iiwa_rl.envs.randomization import Perturbation
from iiwa_rl.sim.robot import UrdfArm

# PyBullet's position motor gains when a command passes none (setJointMotorControlArray).
DEFAULT_POSITION_GAIN = 0.1
DEFAULT_VELOCITY_GAIN = 1.0
# Below this speed (rad/s) the friction torque fades in (tanh), so a joint at rest is not
# kicked back and forth; the position motor holds it anyway.
_FRICTION_SPEED = 0.01
_GRAVITY_MAGNITUDE = 9.81  # m/s^2, the simulation's (BulletSim)


def position_motor_gains(stiffness_scale: float, damping_scale: float) -> tuple[float, float]:
    """PyBullet's (positionGain, velocityGain) for a servo whose stiffness and damping are the
    nominal motor's times these scales.

    PyBullet's POSITION_CONTROL motor is a velocity constraint (btMultiBodyJointMotor): each
    physics step of dt it sets the joint velocity, within the torque limit, to
        v+ = kp (q* - q) / dt + v + kd (0 - v).
    That is a PD servo per unit inertia, qdd = K (q* - q) - D qd, stepped explicitly, with
    K = kp / dt^2 and D = kd / dt. At the defaults (kp 0.1, kd 1) D dt = 1: the damping takes
    the whole velocity each step and the joint moves at (K / D)(q* - q) = kp / dt = 20 /s
    times its error (a 45 ms lag), the slow mode of a servo this overdamped (damping ratio
    1.6). Scaling D by `damping_scale` s:
    - s <= 1: kd = s, PyBullet's own step: the joint keeps (1 - s) of its velocity each step,
      a less damped servo: it follows more closely and sags under gravity (A4 on a ramp,
      measured: 25 ms of lag at s = 0.5 against 45, 3 mrad of sag at rest).
    - s > 1: kd = s would have the damper reverse the velocity every step (v+ = (1 - s) v +
      ...), which a damper never does: the joint chatters at half the physics rate, unstable
      beyond s = 1.95 at kp 0.1 (at s = 2 an eigenvalue of -1.05), held only by the torque
      limit (measured at s = 2: the velocity changed sign on 50 to 70 % of the steps of a
      reach, A2 and A4 at their full torque).
      Integrated implicitly just far enough that it takes the velocity exactly (the damping
      acts on (1 - 1/s) of the new velocity and 1/s of the old), the step is
      v+ = kp (q* - q) / (s dt): the overdamped servo's slow mode K / D, lagging about s
      times as long. In PyBullet's terms positionGain kp / s, velocityGain 1.
    Both branches meet at s = 1 (the nominal motor), and `stiffness_scale` scales K in both.
    """
    if stiffness_scale <= 0 or damping_scale <= 0:
        raise ValueError(
            f"motor scales must be > 0, got stiffness {stiffness_scale}, damping {damping_scale}"
        )
    position_gain = DEFAULT_POSITION_GAIN * stiffness_scale
    if damping_scale <= 1.0:
        return position_gain, DEFAULT_VELOCITY_GAIN * damping_scale
    return position_gain / damping_scale, DEFAULT_VELOCITY_GAIN


class PerturbedArm:
    def __init__(self, robot: UrdfArm, sim) -> None:
        self.robot = robot
        self.client = sim.client
        client, body = self.client, robot.body_id
        self.links = list(robot.arm_joint_indices)  # a joint's child link has its index
        self.nominal_masses, self.nominal_inertias, self.nominal_coms = [], [], []
        for link in self.links:
            info = client.getDynamicsInfo(body, link)
            self.nominal_masses.append(info[0])
            self.nominal_inertias.append(np.array(info[2]))
            self.nominal_coms.append(np.array(info[3]))
        self.nominal_damping = np.array([client.getJointInfo(body, j)[6] for j in self.links])
        self.finger_links = list(robot.finger_link_indices) if robot.with_gripper else []
        self.nominal_finger_friction = [
            client.getDynamicsInfo(body, f)[1] for f in self.finger_links
        ]
        self.flange_in_link7 = robot.flange_offset
        self._friction_axes = self._joint_axes_in_link_frames()
        self._friction_list = [0.0] * robot.joint_count
        self._any_friction = False
        self._payload_offset_list = [0.0, 0.0, 0.0]
        self._payload_mass = 0.0
        sim.pre_step_hooks.append(self._apply_forces)

    def _joint_axes_in_link_frames(self) -> list[tuple[list[float], list[float] | None]]:
        """Per arm joint: its axis in the frame PyBullet applies a LINK_FRAME torque in (the
        child link's centre-of-mass frame), and in the parent link's (None for the first
        joint, whose parent is the fixed base). Every iiwa joint turns about its child link's
        z axis; the directions are the same in every configuration, so any one will do."""
        client, body, links = self.client, self.robot.body_id, self.links
        states = client.getLinkStates(body, links)

        def rotation(quaternion) -> np.ndarray:
            return np.array(pybullet.getMatrixFromQuaternion(quaternion)).reshape(3, 3)

        axes = []
        for axis in range(len(links)):
            world_axis = rotation(states[axis][5])[:, 2]  # the child's link frame, z
            in_child = rotation(states[axis][1]).T @ world_axis  # [1]: its inertial frame
            in_parent = rotation(states[axis - 1][1]).T @ world_axis if axis > 0 else None
            axes.append((in_child.tolist(), None if in_parent is None else in_parent.tolist()))
        return axes

    def apply(self, perturbation: Perturbation) -> None:
        client, body, robot = self.client, self.robot.body_id, self.robot
        last = len(self.links) - 1
        payload = perturbation.payload_mass
        payload_point = self.flange_in_link7 + np.array([0.0, 0.0, perturbation.payload_com_z])
        for axis, link in enumerate(self.links):
            scale = float(perturbation.link_mass_scales[axis])
            mass = self.nominal_masses[axis] * scale
            inertia = self.nominal_inertias[axis] * scale
            if axis == last and payload > 0.0:
                offset = payload_point - self.nominal_coms[axis]
                # A point mass's inertia about the centre of mass, diagonal part (the URDF's
                # link 7 frame is principal; the off-diagonal terms of a payload on the
                # flange axis are zero).
                inertia = inertia + payload * (offset @ offset - offset * offset)
                mass += payload
                self._payload_offset_list = [float(v) for v in offset]
            client.changeDynamics(
                body, link, mass=mass, localInertiaDiagonal=[float(v) for v in inertia]
            )
        self._payload_mass = float(payload)
        damping = (
            self.nominal_damping
            if perturbation.joint_damping is None
            else np.asarray(perturbation.joint_damping)
        )
        for joint, value in zip(self.links, damping):
            client.changeDynamics(body, joint, jointDamping=float(value))
        self._friction_list = [float(v) for v in perturbation.joint_friction]
        self._any_friction = any(self._friction_list)
        nominal_gains = perturbation.stiffness_scale == 1.0 and perturbation.damping_scale == 1.0
        position_gain, velocity_gain = (
            (None, None)
            if nominal_gains
            else position_motor_gains(perturbation.stiffness_scale, perturbation.damping_scale)
        )
        robot.set_motor_parameters(
            position_gain, velocity_gain, robot.limits.effort * perturbation.force_limit_scale
        )
        if self.finger_links:
            for link, nominal in zip(self.finger_links, self.nominal_finger_friction):
                friction = perturbation.finger_friction
                client.changeDynamics(
                    body, link, lateralFriction=nominal if friction is None else float(friction)
                )

    def _apply_forces(self) -> None:
        # Plain floats, one torque call per loaded link: this runs before every physics step.
        friction, payload = self._friction_list, self._payload_mass
        rubbing = self._any_friction
        if payload <= 0.0 and not rubbing:
            return
        client, body, links = self.client, self.robot.body_id, self.links
        if rubbing:
            velocities = self.robot.arm_speeds_after_step()  # the speed clamp's reading
            if velocities is None:
                arm = self.robot.arm_joint_indices
                velocities = [s[1] for s in client.getJointStates(body, arm)]
            tanh = math.tanh
            # In each link's own frame: its joint's friction about its axis, and the
            # reaction of the next joint's.
            torques = [[0.0, 0.0, 0.0] for _ in links]
            for axis, (in_child, in_parent) in enumerate(self._friction_axes):
                size = friction[axis]
                if size == 0.0:
                    continue
                scale = -size * tanh(velocities[axis] / _FRICTION_SPEED)
                child = torques[axis]
                child[0] += scale * in_child[0]
                child[1] += scale * in_child[1]
                child[2] += scale * in_child[2]
                if in_parent is not None:
                    parent = torques[axis - 1]
                    parent[0] -= scale * in_parent[0]
                    parent[1] -= scale * in_parent[1]
                    parent[2] -= scale * in_parent[2]
            torque_on, frame = client.applyExternalTorque, pybullet.LINK_FRAME
            for link, torque in zip(links, torques):
                if torque[0] or torque[1] or torque[2]:
                    torque_on(body, link, torque, frame)
        if payload > 0.0:
            # The moment of the payload's weight about link 7's centre of mass: lever x
            # (0, 0, -m g), the lever turned into world axes by the link frame. The frame as
            # the last step left it (PyBullet updates it in the step): a torque held for one
            # 5 ms step needs no fresher one.
            r = pybullet.getMatrixFromQuaternion(client.getLinkState(body, links[-1])[5])
            ox, oy, oz = self._payload_offset_list
            lever_x = r[0] * ox + r[1] * oy + r[2] * oz
            lever_y = r[3] * ox + r[4] * oy + r[5] * oz
            weight = payload * _GRAVITY_MAGNITUDE
            client.applyExternalTorque(
                body, links[-1], [-lever_y * weight, lever_x * weight, 0.0], pybullet.WORLD_FRAME
            )
