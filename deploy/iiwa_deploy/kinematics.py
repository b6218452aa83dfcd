"""Forward kinematics in numpy from the contract's URDF-style joint chain.

Each joint transform is T_parent_child = Trans(xyz) * RotRPY(rpy) * Rot(axis, q) with
RotRPY = Rz(yaw) Ry(pitch) Rx(roll) (fixed-axis roll-pitch-yaw, the URDF convention). The
fixed parts are precomputed once so a forward pass is a handful of 3x3 products.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .schema import CONTROLLER_PHRASING, ConfigError, from_mapping

# The KUKA LBR iiwa 14 R820 chain in contract form (same origins as the common URDFs):
# base-to-flange 1.306 m straight up at q = 0. Useful as a reference for contract producers.
IIWA14_R820_KINEMATICS: dict[str, Any] = {
    "joints": [
        {
            "name": "iiwa_joint_1",
            "origin_xyz": [0.0, 0.0, 0.1575],
            "origin_rpy": [0.0, 0.0, 0.0],
            "axis": [0.0, 0.0, 1.0],
        },
        {
            "name": "iiwa_joint_2",
            "origin_xyz": [0.0, 0.0, 0.2025],
            "origin_rpy": [math.pi / 2, 0.0, math.pi],
            "axis": [0.0, 0.0, 1.0],
        },
        {
            "name": "iiwa_joint_3",
            "origin_xyz": [0.0, 0.2045, 0.0],
            "origin_rpy": [math.pi / 2, 0.0, math.pi],
            "axis": [0.0, 0.0, 1.0],
        },
        {
            "name": "iiwa_joint_4",
            "origin_xyz": [0.0, 0.0, 0.2155],
            "origin_rpy": [math.pi / 2, 0.0, 0.0],
            "axis": [0.0, 0.0, 1.0],
        },
        {
            "name": "iiwa_joint_5",
            "origin_xyz": [0.0, 0.1845, 0.0],
            "origin_rpy": [-math.pi / 2, math.pi, 0.0],
            "axis": [0.0, 0.0, 1.0],
        },
        {
            "name": "iiwa_joint_6",
            "origin_xyz": [0.0, 0.0, 0.2155],
            "origin_rpy": [math.pi / 2, 0.0, 0.0],
            "axis": [0.0, 0.0, 1.0],
        },
        {
            "name": "iiwa_joint_7",
            "origin_xyz": [0.0, 0.081, 0.0],
            "origin_rpy": [-math.pi / 2, math.pi, 0.0],
            "axis": [0.0, 0.0, 1.0],
        },
    ],
    "tcp_offset_xyz": [0.0, 0.0, 0.045],
    "tcp_offset_rpy": [0.0, 0.0, 0.0],
}


def rotation_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def rotation_about_axis(unit_axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula for a unit axis."""
    x, y, z = unit_axis
    c, s = math.cos(angle), math.sin(angle)
    t = 1.0 - c
    return np.array(
        [
            [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
            [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
            [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
        ]
    )


Matrix3 = tuple[float, float, float, float, float, float, float, float, float]
_IDENTITY: Matrix3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _as_tuple(matrix: np.ndarray) -> Matrix3:
    return tuple(float(v) for v in matrix.ravel())  # type: ignore[return-value]


def _multiply(a: Matrix3, b: Matrix3) -> Matrix3:
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = a
    b00, b01, b02, b10, b11, b12, b20, b21, b22 = b
    return (
        a00 * b00 + a01 * b10 + a02 * b20,
        a00 * b01 + a01 * b11 + a02 * b21,
        a00 * b02 + a01 * b12 + a02 * b22,
        a10 * b00 + a11 * b10 + a12 * b20,
        a10 * b01 + a11 * b11 + a12 * b21,
        a10 * b02 + a11 * b12 + a12 * b22,
        a20 * b00 + a21 * b10 + a22 * b20,
        a20 * b01 + a21 * b11 + a22 * b21,
        a20 * b02 + a21 * b12 + a22 * b22,
    )


def _height_block(fixed: Matrix3, unit_axis: np.ndarray, origin: Point3) -> np.ndarray:
    """3 x 10: a row r times it gives r F a a^T, r F (I - a a^T), r F [a]x and r . origin,
    the parts of r F R(a, q) (Rodrigues) and of the height of the joint's origin."""
    rotation = np.array(fixed).reshape(3, 3)
    ax, ay, az = unit_axis
    along = np.outer(unit_axis, unit_axis)
    cross = np.array([[0.0, -az, ay], [az, 0.0, -ax], [-ay, ax, 0.0]])
    return np.hstack(
        [
            rotation @ along,
            rotation @ (np.eye(3) - along),
            rotation @ cross,
            np.array(origin, dtype=float)[:, None],
        ]
    )


def axis_rotation_tuple(unit_axis: np.ndarray, angle: float) -> Matrix3:
    return _as_tuple(rotation_about_axis(unit_axis, angle))


Point3 = tuple[float, float, float]


@dataclass(frozen=True)
class JointOrigin:
    """One revolute joint of the contract's chain, as its JSON names it: the joint frame's
    origin relative to the parent link (m, URDF roll-pitch-yaw rad) and its axis."""

    name: str
    origin_xyz: Point3 = (0.0, 0.0, 0.0)
    origin_rpy: Point3 = (0.0, 0.0, 0.0)
    axis: Point3 = (0.0, 0.0, 1.0)


@dataclass(frozen=True)
class _KinematicsSection:
    """The contract's `kinematics` JSON, read by the project's one validator (schema.py)."""

    joints: tuple[JointOrigin, ...]
    tcp_offset_xyz: Point3 = (0.0, 0.0, 0.0)
    tcp_offset_rpy: Point3 = (0.0, 0.0, 0.0)


class KinematicChain:
    """A serial chain of revolute joints ending in a fixed TCP offset."""

    def __init__(
        self,
        joints: Sequence[JointOrigin],
        tcp_offset_xyz: Sequence[float] = (0.0, 0.0, 0.0),
        tcp_offset_rpy: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
        if not joints:
            raise ValueError("kinematics: the chain needs at least one joint")
        self.joint_names: tuple[str, ...] = tuple(j.name for j in joints)
        self._origins: list[tuple[float, ...]] = []
        self._fixed_rotations: list[Matrix3] = []
        self._axes: list[np.ndarray] = []
        self._axis_floats: list[tuple[float, float, float]] = []  # the same, for the Jacobian
        self._about_z: list[bool] = []
        for joint in joints:
            axis = np.asarray(joint.axis, dtype=float)
            norm = float(np.linalg.norm(axis))
            if not norm > 1e-9:
                raise ValueError(f"kinematics: joint '{joint.name}' has a zero axis")
            unit_axis = axis / norm
            self._axes.append(unit_axis)
            self._axis_floats.append(tuple(float(v) for v in unit_axis))
            self._about_z.append(bool(np.allclose(unit_axis, (0.0, 0.0, 1.0), atol=1e-15)))
            self._origins.append(tuple(float(v) for v in joint.origin_xyz))
            self._fixed_rotations.append(_as_tuple(rotation_from_rpy(*joint.origin_rpy)))
        self._tcp_origin = tuple(float(v) for v in tcp_offset_xyz)
        self._tcp_rotation = _as_tuple(rotation_from_rpy(*(float(v) for v in tcp_offset_rpy)))
        # `heights`' constants: per joint [F a a^T | F (I - a a^T) | F [a]x | origin].
        self._height_blocks = [
            _height_block(fixed, axis, origin)
            for fixed, axis, origin in zip(
                self._fixed_rotations, self._axes, self._origins, strict=True
            )
        ]
        self._tcp_origin_array = np.array(self._tcp_origin)
        self._tcp_rotation_array = np.array(self._tcp_rotation).reshape(3, 3)

    @property
    def joint_count(self) -> int:
        return len(self._axes)

    @classmethod
    def from_contract(cls, kinematics: Mapping[str, Any]) -> KinematicChain:
        """Build from the contract's "kinematics" mapping; a ConfigError (a ValueError)
        names the key that is wrong."""
        section = from_mapping(_KinematicsSection, kinematics, "kinematics", CONTROLLER_PHRASING)
        if not section.joints:
            raise ConfigError("kinematics.joints: expected a non-empty list of joints")
        return cls(section.joints, section.tcp_offset_xyz, section.tcp_offset_rpy)

    def forward(self, joint_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (m) and rotation matrix in the base frame for joint positions (rad)."""
        q = np.asarray(joint_positions, dtype=float)
        if q.shape != (self.joint_count,):
            raise ValueError(f"expected {self.joint_count} joint positions, got shape {q.shape}")
        # Plain float arithmetic on 9-tuples: numpy spends ~2 us per call on 3x3 arrays, which
        # made a pass ~3x slower than this, and the pass runs at the policy rate in the loop.
        rotation: Matrix3 = _IDENTITY
        px = py = pz = 0.0
        for (ox, oy, oz), fixed, axis, about_z, angle in zip(
            self._origins, self._fixed_rotations, self._axes, self._about_z, q.tolist(), strict=True
        ):
            r00, r01, r02, r10, r11, r12, r20, r21, r22 = rotation
            px += r00 * ox + r01 * oy + r02 * oz
            py += r10 * ox + r11 * oy + r12 * oz
            pz += r20 * ox + r21 * oy + r22 * oz
            if about_z:
                c, s = math.cos(angle), math.sin(angle)
                joint_rotation: Matrix3 = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
            else:
                joint_rotation = axis_rotation_tuple(axis, angle)
            rotation = _multiply(rotation, _multiply(fixed, joint_rotation))
        r00, r01, r02, r10, r11, r12, r20, r21, r22 = rotation
        ox, oy, oz = self._tcp_origin
        position = np.array(
            [
                px + r00 * ox + r01 * oy + r02 * oz,
                py + r10 * ox + r11 * oy + r12 * oz,
                pz + r20 * ox + r21 * oy + r22 * oz,
            ]
        )
        return position, np.array(_multiply(rotation, self._tcp_rotation)).reshape(3, 3)

    def heights(self, joint_positions: np.ndarray, points_m: np.ndarray) -> np.ndarray:
        """Base-frame z (m) of the TCP and of each point given in the TCP frame (k x 3), for
        N configurations (N x n rad): N x (1 + k), the TCP first.

        A height needs only the bottom row of each rotation, and the bottom row of a product
        is the bottom row of the left factor times the right one, so the chain carries one
        row vector per configuration. Rodrigues splits joint j's rotation into constant
        parts, R = a a^T + cos(q) (I - a a^T) + sin(q) [a]x, so one product of the rows with
        the joint's constant 3 x 10 block (`_height_blocks`: the fixed rotation times each
        part, and the joint's origin) gives all three terms and the origin's height; the
        floor guard calls this for some 35 configurations per preview, where each numpy call
        costs more than its arithmetic."""
        q = np.asarray(joint_positions, dtype=float)
        if q.ndim != 2 or q.shape[1] != self.joint_count:
            raise ValueError(f"expected N x {self.joint_count} joint positions, got {q.shape}")
        cosines, sines = np.cos(q), np.sin(q)
        row = np.zeros((q.shape[0], 3))
        row[:, 2] = 1.0  # the identity's bottom row
        z = np.zeros(q.shape[0])
        for joint, block in enumerate(self._height_blocks):
            terms = row @ block
            z += terms[:, 9]
            row = (
                terms[:, 0:3]
                + cosines[:, joint, None] * terms[:, 3:6]
                + sines[:, joint, None] * terms[:, 6:9]
            )
        tcp_z = z + row @ self._tcp_origin_array
        tcp_row = row @ self._tcp_rotation_array
        points = np.asarray(points_m, dtype=float).reshape(-1, 3)
        return np.concatenate([tcp_z[:, None], tcp_z[:, None] + tcp_row @ points.T], axis=1)

    def lowest_hand_point(
        self, joint_positions: np.ndarray, points_m: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """The lowest base-frame z (m) of the TCP and of the points given in the TCP frame
        (k x 3) for one configuration, and the TCP position (the cell gate checks it too)."""
        position, rotation = self.forward(joint_positions)
        tips_z = position[2] + np.asarray(points_m) @ rotation[2]
        return min(float(position[2]), float(tips_z.min())), position

    def tcp_position(self, joint_positions: np.ndarray) -> np.ndarray:
        return self.forward(joint_positions)[0]


def iiwa14_r820_chain() -> KinematicChain:
    return KinematicChain.from_contract(IIWA14_R820_KINEMATICS)


# ------------------------------------------------------------------ orientation helpers
# Quaternions are (x, y, z, w), as PyBullet writes them. Plain floats: these run once per
# policy step on four numbers, where numpy's call overhead is most of the cost.
Quaternion = tuple[float, float, float, float]


def quaternion_multiply(a, b) -> Quaternion:
    """Hamilton product of (x, y, z, w) quaternions."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    )


def rotation_error_floats(current, target) -> tuple[float, float, float]:
    """Rotation vector (axis times angle, rad, base frame) turning `current` into `target`,
    the shorter way round."""
    cx, cy, cz, cw = map(float, current)
    x, y, z, w = quaternion_multiply(tuple(map(float, target)), (-cx, -cy, -cz, cw))
    if w < 0.0:
        x, y, z, w = -x, -y, -z, -w
    sine = math.sqrt(x * x + y * y + z * z)
    scale = 2.0 if sine < 1e-9 else 2.0 * math.atan2(sine, w) / sine
    return x * scale, y * scale, z * scale


def quaternion_from_euler(roll: float, pitch: float, yaw: float) -> Quaternion:
    """The quaternion of R = Rz(yaw) Ry(pitch) Rx(roll), in the operation order of
    Bullet's setEulerZYX (what pybullet.getQuaternionFromEuler returns), so that both sides
    of the IK parity test start from the same bits."""
    half_yaw, half_pitch, half_roll = float(yaw) * 0.5, float(pitch) * 0.5, float(roll) * 0.5
    cos_yaw, sin_yaw = math.cos(half_yaw), math.sin(half_yaw)
    cos_pitch, sin_pitch = math.cos(half_pitch), math.sin(half_pitch)
    cos_roll, sin_roll = math.cos(half_roll), math.sin(half_roll)
    return (
        sin_roll * cos_pitch * cos_yaw - cos_roll * sin_pitch * sin_yaw,
        cos_roll * sin_pitch * cos_yaw + sin_roll * cos_pitch * sin_yaw,
        cos_roll * cos_pitch * sin_yaw - sin_roll * sin_pitch * cos_yaw,
        cos_roll * cos_pitch * cos_yaw + sin_roll * sin_pitch * sin_yaw,
    )


def down_orientation(yaw: float) -> Quaternion:
    """A TCP pointing straight down (tool z along base -z), turned by `yaw` about base z."""
    return quaternion_from_euler(math.pi, 0.0, yaw)


def quaternion_from_matrix(rotation: np.ndarray) -> Quaternion:
    """(x, y, z, w) of a rotation matrix (Shepperd's method: the largest diagonal term
    chooses the branch, so no division by a small number)."""
    m = np.asarray(rotation, dtype=float)
    m00, m01, m02 = float(m[0, 0]), float(m[0, 1]), float(m[0, 2])
    m10, m11, m12 = float(m[1, 0]), float(m[1, 1]), float(m[1, 2])
    m20, m21, m22 = float(m[2, 0]), float(m[2, 1]), float(m[2, 2])
    trace = m00 + m11 + m22
    if trace > 0.0:
        s = 2.0 * math.sqrt(trace + 1.0)
        return ((m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s, 0.25 * s)
    if m00 > m11 and m00 > m22:
        s = 2.0 * math.sqrt(1.0 + m00 - m11 - m22)
        return (0.25 * s, (m01 + m10) / s, (m02 + m20) / s, (m21 - m12) / s)
    if m11 > m22:
        s = 2.0 * math.sqrt(1.0 + m11 - m00 - m22)
        return ((m01 + m10) / s, 0.25 * s, (m12 + m21) / s, (m02 - m20) / s)
    s = 2.0 * math.sqrt(1.0 + m22 - m00 - m11)
    return ((m02 + m20) / s, (m12 + m21) / s, 0.25 * s, (m10 - m01) / s)


def rotation_yaw(rotation: np.ndarray) -> float:
    """Heading (rad) of a frame's x axis in the base plane."""
    return math.atan2(float(rotation[1, 0]), float(rotation[0, 0]))


def quaternion_yaw(orientation) -> float:
    """Heading (rad) of a frame's x axis in the base plane, from its (x, y, z, w) quaternion
    (the same number as `rotation_yaw` of its matrix)."""
    x, y, z, w = map(float, orientation)
    return math.atan2(2.0 * (x * y + w * z), 1.0 - 2.0 * (y * y + z * z))


# ------------------------------------------------------------------ Jacobian and IK
def chain_jacobian(chain: KinematicChain, joint_positions: np.ndarray) -> np.ndarray:
    """The TCP's geometric Jacobian in the base frame, 6 x n: rows 0-2 linear (m/rad),
    rows 3-5 angular (rad/rad), the layout of PyBullet's calculateJacobian at the TCP point
    (equal to it to 1e-15 on the simulated arm, tests/test_deploy_grasp.py)."""
    q = np.asarray(joint_positions, dtype=float)
    if q.shape != (chain.joint_count,):
        raise ValueError(f"expected {chain.joint_count} joint positions, got shape {q.shape}")
    rotation: Matrix3 = _IDENTITY
    px = py = pz = 0.0
    axes: list[tuple[float, float, float]] = []
    origins: list[tuple[float, float, float]] = []
    for (ox, oy, oz), fixed, axis, axis_floats, about_z, angle in zip(
        chain._origins,
        chain._fixed_rotations,
        chain._axes,
        chain._axis_floats,
        chain._about_z,
        q.tolist(),
        strict=True,
    ):
        r00, r01, r02, r10, r11, r12, r20, r21, r22 = rotation
        px += r00 * ox + r01 * oy + r02 * oz
        py += r10 * ox + r11 * oy + r12 * oz
        pz += r20 * ox + r21 * oy + r22 * oz
        rotation = _multiply(rotation, fixed)
        r00, r01, r02, r10, r11, r12, r20, r21, r22 = rotation
        ax, ay, az = axis_floats
        axes.append(
            (
                r00 * ax + r01 * ay + r02 * az,
                r10 * ax + r11 * ay + r12 * az,
                r20 * ax + r21 * ay + r22 * az,
            )
        )
        origins.append((px, py, pz))
        if about_z:
            c, s = math.cos(angle), math.sin(angle)
            joint_rotation: Matrix3 = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
        else:
            joint_rotation = axis_rotation_tuple(axis, angle)
        rotation = _multiply(rotation, joint_rotation)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = rotation
    ox, oy, oz = chain._tcp_origin
    tx = px + r00 * ox + r01 * oy + r02 * oz
    ty = py + r10 * ox + r11 * oy + r12 * oz
    tz = pz + r20 * ox + r21 * oy + r22 * oz
    columns = []
    for (zx, zy, zz), (jx, jy, jz) in zip(axes, origins, strict=True):
        dx, dy, dz = tx - jx, ty - jy, tz - jz
        columns.append((zy * dz - zz * dy, zz * dx - zx * dz, zx * dy - zy * dx, zx, zy, zz))
    # Rows from the columns' floats, one array at the end: 42 element writes into an array
    # cost more than the whole pass above.
    return np.array(list(zip(*columns, strict=True)))


DEFAULT_IK_DAMPING = 0.05
_DAMPING_MATRICES: dict[float, np.ndarray] = {}


def differential_ik_step(
    chain: KinematicChain,
    joint_positions: np.ndarray,
    tcp_position: np.ndarray,
    tcp_orientation,
    target_position: np.ndarray,
    target_orientation,
    target_lower: np.ndarray,
    target_upper: np.ndarray,
    damping: float = DEFAULT_IK_DAMPING,
) -> np.ndarray:
    """One damped-least-squares step towards a TCP pose: dq = J^T (J J^T + d^2 I)^-1 e,
    clipped into [target_lower, target_upper].

    Resolved-rate control: for the few centimetres of one policy step it lands close to the
    target, stays well-behaved near singularities (the damping), and costs one Jacobian
    instead of an iterative solve. `tcp_position`/`tcp_orientation` are the measured pose the
    error is taken from (the env passes the simulator's, the controller its forward
    kinematics'); orientations are (x, y, z, w) quaternions in the base frame."""
    q = np.asarray(joint_positions, dtype=float)
    jacobian = chain_jacobian(chain, q)
    # The 6-D error from plain floats, one array at the end: fewer numpy calls.
    error = np.array(
        [
            t - c
            for t, c in zip(
                np.asarray(target_position).tolist(), np.asarray(tcp_position).tolist(), strict=True
            )
        ]
        + list(rotation_error_floats(tcp_orientation, target_orientation))
    )
    damping_matrix = _DAMPING_MATRICES.get(damping)
    if damping_matrix is None:
        damping_matrix = _DAMPING_MATRICES[damping] = damping * damping * np.eye(6)
    step = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + damping_matrix, error)
    return np.minimum(np.maximum(q + step, target_lower), target_upper)
