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


def axis_rotation_tuple(unit_axis: np.ndarray, angle: float) -> Matrix3:
    return _as_tuple(rotation_about_axis(unit_axis, angle))


@dataclass(frozen=True)
class JointOrigin:
    name: str
    origin_xyz: tuple[float, float, float]
    origin_rpy: tuple[float, float, float]
    axis: tuple[float, float, float]


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{where}: expected 3 numbers, got {value!r}")
    triple = (float(value[0]), float(value[1]), float(value[2]))
    if not all(math.isfinite(v) for v in triple):
        raise ValueError(f"{where}: values must be finite, got {value!r}")
    return triple


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
        self._about_z: list[bool] = []
        for joint in joints:
            axis = np.asarray(joint.axis, dtype=float)
            norm = float(np.linalg.norm(axis))
            if not norm > 1e-9:
                raise ValueError(f"kinematics: joint '{joint.name}' has a zero axis")
            self._axes.append(axis / norm)
            self._about_z.append(bool(np.allclose(axis / norm, (0.0, 0.0, 1.0), atol=1e-15)))
            self._origins.append(tuple(float(v) for v in joint.origin_xyz))
            self._fixed_rotations.append(_as_tuple(rotation_from_rpy(*joint.origin_rpy)))
        self._tcp_origin = tuple(float(v) for v in tcp_offset_xyz)
        self._tcp_rotation = _as_tuple(rotation_from_rpy(*(float(v) for v in tcp_offset_rpy)))

    @property
    def joint_count(self) -> int:
        return len(self._axes)

    @classmethod
    def from_contract(cls, kinematics: Mapping[str, Any]) -> KinematicChain:
        """Build from the contract's "kinematics" mapping; ValueError says what is wrong."""
        if not isinstance(kinematics, Mapping):
            raise ValueError("kinematics: expected a mapping")
        raw_joints = kinematics.get("joints")
        if not isinstance(raw_joints, Sequence) or not raw_joints:
            raise ValueError("kinematics.joints: expected a non-empty list of joints")
        joints = []
        for index, raw in enumerate(raw_joints):
            where = f"kinematics.joints[{index}]"
            if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
                raise ValueError(f"{where}: expected a mapping with a string 'name'")
            joints.append(
                JointOrigin(
                    name=raw["name"],
                    origin_xyz=_triple(raw.get("origin_xyz", (0, 0, 0)), f"{where}.origin_xyz"),
                    origin_rpy=_triple(raw.get("origin_rpy", (0, 0, 0)), f"{where}.origin_rpy"),
                    axis=_triple(raw.get("axis", (0, 0, 1)), f"{where}.axis"),
                )
            )
        return cls(
            joints,
            _triple(kinematics.get("tcp_offset_xyz", (0, 0, 0)), "kinematics.tcp_offset_xyz"),
            _triple(kinematics.get("tcp_offset_rpy", (0, 0, 0)), "kinematics.tcp_offset_rpy"),
        )

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

    def tcp_position(self, joint_positions: np.ndarray) -> np.ndarray:
        return self.forward(joint_positions)[0]


def iiwa14_r820_chain() -> KinematicChain:
    return KinematicChain.from_contract(IIWA14_R820_KINEMATICS)
