"""Forward kinematics in numpy from the contract's URDF-style joint chain.

Each joint transform is T_parent_child = Trans(xyz) * RotRPY(rpy) * Rot(axis, q) with
RotRPY = Rz(yaw) Ry(pitch) Rx(roll) (fixed-axis roll-pitch-yaw, the URDF convention). The
fixed parts are precomputed once so a forward pass is seven small matrix products.
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
        {"name": "iiwa_joint_1", "origin_xyz": [0.0, 0.0, 0.1575], "origin_rpy": [0.0, 0.0, 0.0],
         "axis": [0.0, 0.0, 1.0]},
        {"name": "iiwa_joint_2", "origin_xyz": [0.0, 0.0, 0.2025],
         "origin_rpy": [math.pi / 2, 0.0, math.pi], "axis": [0.0, 0.0, 1.0]},
        {"name": "iiwa_joint_3", "origin_xyz": [0.0, 0.2045, 0.0],
         "origin_rpy": [math.pi / 2, 0.0, math.pi], "axis": [0.0, 0.0, 1.0]},
        {"name": "iiwa_joint_4", "origin_xyz": [0.0, 0.0, 0.2155],
         "origin_rpy": [math.pi / 2, 0.0, 0.0], "axis": [0.0, 0.0, 1.0]},
        {"name": "iiwa_joint_5", "origin_xyz": [0.0, 0.1845, 0.0],
         "origin_rpy": [-math.pi / 2, math.pi, 0.0], "axis": [0.0, 0.0, 1.0]},
        {"name": "iiwa_joint_6", "origin_xyz": [0.0, 0.0, 0.2155],
         "origin_rpy": [math.pi / 2, 0.0, 0.0], "axis": [0.0, 0.0, 1.0]},
        {"name": "iiwa_joint_7", "origin_xyz": [0.0, 0.081, 0.0],
         "origin_rpy": [-math.pi / 2, math.pi, 0.0], "axis": [0.0, 0.0, 1.0]},
    ],
    "tcp_offset_xyz": [0.0, 0.0, 0.045],
    "tcp_offset_rpy": [0.0, 0.0, 0.0],
}


def rotation_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def rotation_about_axis(unit_axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula for a unit axis."""
    x, y, z = unit_axis
    c, s = math.cos(angle), math.sin(angle)
    t = 1.0 - c
    return np.array([
        [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
        [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
        [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
    ])


@dataclass(frozen=True)
class JointOrigin:
    name: str
    origin_xyz: tuple[float, float, float]
    origin_rpy: tuple[float, float, float]
    axis: tuple[float, float, float]


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
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
        self._fixed: list[np.ndarray] = []
        self._axes: list[np.ndarray] = []
        for joint in joints:
            axis = np.asarray(joint.axis, dtype=float)
            norm = float(np.linalg.norm(axis))
            if not norm > 1e-9:
                raise ValueError(f"kinematics: joint '{joint.name}' has a zero axis")
            self._axes.append(axis / norm)
            self._fixed.append(_homogeneous(joint.origin_xyz, joint.origin_rpy))
        self._tcp = _homogeneous(tcp_offset_xyz, tcp_offset_rpy)

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
            joints.append(JointOrigin(
                name=raw["name"],
                origin_xyz=_triple(raw.get("origin_xyz", (0, 0, 0)), f"{where}.origin_xyz"),
                origin_rpy=_triple(raw.get("origin_rpy", (0, 0, 0)), f"{where}.origin_rpy"),
                axis=_triple(raw.get("axis", (0, 0, 1)), f"{where}.axis"),
            ))
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
        transform = np.eye(4)
        joint_rotation = np.eye(4)
        for fixed, axis, angle in zip(self._fixed, self._axes, q, strict=True):
            joint_rotation[:3, :3] = rotation_about_axis(axis, float(angle))
            transform = transform @ fixed @ joint_rotation
        transform = transform @ self._tcp
        return transform[:3, 3].copy(), transform[:3, :3].copy()

    def tcp_position(self, joint_positions: np.ndarray) -> np.ndarray:
        return self.forward(joint_positions)[0]


def _homogeneous(xyz: Sequence[float], rpy: Sequence[float]) -> np.ndarray:
    transform = np.eye(4)
    transform[:3, :3] = rotation_from_rpy(float(rpy[0]), float(rpy[1]), float(rpy[2]))
    transform[:3, 3] = np.asarray(xyz, dtype=float)
    return transform


def iiwa14_r820_chain() -> KinematicChain:
    return KinematicChain.from_contract(IIWA14_R820_KINEMATICS)
