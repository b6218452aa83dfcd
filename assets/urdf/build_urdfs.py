"""Writes the project's URDFs (iiwa14.urdf, iiwa14_gripper.urdf, cube.urdf, table.urdf).

The URDFs are committed; this script is their single source so that a change of a limit
or a mass is made once. Run it after editing the tables below:

    python assets/urdf/build_urdfs.py

Kinematics: the KUKA LBR iiwa 14 R820 (same joint frames as pybullet_data's kuka_iiwa).
Limits: KUKA's datasheet (see shared/iiwa14.md). Masses, centres of mass and inertias:
the values Drake ships for the iiwa14 (about 30.6 kg with the base), in place of
pybullet_data's placeholders. Visual and collision meshes are referenced from the
installed pybullet_data package as ``package://pybullet_data/...``; the robot loader
resolves that prefix, so no third-party mesh is copied into this repository.
"""

from __future__ import annotations

import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
MESH = "package://pybullet_data/kuka_iiwa/meshes"
PI = math.pi

# name, origin xyz, origin rpy, range deg, speed deg/s, torque Nm
JOINTS = [
    ("iiwa_joint_1", (0, 0, 0.1575), (0, 0, 0), 170, 85, 320),
    ("iiwa_joint_2", (0, 0, 0.2025), (PI / 2, 0, PI), 120, 85, 320),
    ("iiwa_joint_3", (0, 0.2045, 0), (PI / 2, 0, PI), 170, 100, 176),
    ("iiwa_joint_4", (0, 0, 0.2155), (PI / 2, 0, 0), 120, 75, 176),
    ("iiwa_joint_5", (0, 0.1845, 0), (-PI / 2, PI, 0), 170, 130, 110),
    ("iiwa_joint_6", (0, 0, 0.2155), (PI / 2, 0, 0), 120, 135, 40),
    ("iiwa_joint_7", (0, 0.081, 0), (-PI / 2, PI, 0), 175, 135, 40),
]
# link index 0..7: mass kg, centre of mass xyz, principal inertia (ixx, iyy, izz) kg m^2
LINKS = [
    (5.00, (-0.1, 0, 0.07), (0.05, 0.06, 0.03)),
    (5.76, (0, -0.03, 0.12), (0.033, 0.0333, 0.0123)),
    (6.35, (0.0003, 0.059, 0.042), (0.0305, 0.0304, 0.011)),
    (3.50, (0, 0.03, 0.13), (0.025, 0.0238, 0.0076)),
    (3.50, (0, 0.067, 0.034), (0.017, 0.0164, 0.006)),
    (3.50, (0.0001, 0.021, 0.076), (0.01, 0.0087, 0.00449)),
    (1.80, (0, 0.0006, 0.0004), (0.0049, 0.0047, 0.0036)),
    (1.20, (0, 0, 0.02), (0.001, 0.001, 0.001)),
]
FLANGE_OFFSET = 0.045  # link_7 frame to the media flange, m (base-to-flange 1.306 m at zero)
JOINT_DAMPING = 0.5  # N m s/rad, viscous friction of each axis

# Parallel-jaw gripper: palm on the flange, two prismatic fingers mirrored about the palm.
PALM_SIZE = (0.06, 0.10, 0.04)  # x, y, z (z along the flange axis), m
PALM_MASS = 0.6
FINGER_SIZE = (0.02, 0.01, 0.05)  # width, thickness, length, m
FINGER_MASS = 0.05
FINGER_TRAVEL = 0.04  # each finger's stroke, m: opening 0 to 8 cm
FINGER_FORCE = 40.0  # N per finger (grip force), finite as on a real gripper
FINGER_SPEED = 0.1  # m/s
FINGER_FRICTION = 1.5
TCP_DEPTH = 0.075  # flange to the grasp point between the pads, 1.5 cm above the tips, m


def _f(values) -> str:
    return " ".join(f"{v:.10g}" for v in values)


def _inertial(mass: float, com, inertia) -> str:
    ixx, iyy, izz = inertia
    return (
        f'    <inertial><origin xyz="{_f(com)}" rpy="0 0 0"/><mass value="{mass:g}"/>\n'
        f'      <inertia ixx="{ixx:g}" ixy="0" ixz="0" iyy="{iyy:g}" iyz="0" izz="{izz:g}"/>'
        "</inertial>\n"
    )


def _frame_link(name: str) -> str:
    """A massless-in-practice frame link (PyBullet gives links without <inertial> 1 kg)."""
    return (
        f'  <link name="{name}"><inertial><mass value="0.001"/>'
        '<inertia ixx="1e-7" ixy="0" ixz="0" iyy="1e-7" iyz="0" izz="1e-7"/></inertial></link>\n'
    )


def _box_inertia(mass: float, size) -> tuple[float, float, float]:
    x, y, z = size
    return (mass * (y * y + z * z) / 12, mass * (x * x + z * z) / 12, mass * (x * x + y * y) / 12)


def _arm_links() -> str:
    colors = ["0.35 0.35 0.35 1"] + ["1.0 0.42 0.04 1", "0.85 0.85 0.85 1"] * 4
    parts = []
    for index, (mass, com, inertia) in enumerate(LINKS):
        parts.append(
            f'  <link name="iiwa_link_{index}">\n'
            + _inertial(mass, com, inertia)
            + f'    <visual><geometry><mesh filename="{MESH}/link_{index}.obj"/></geometry>'
            f'<material name="link_{index}_color"><color rgba="{colors[index]}"/></material></visual>\n'
            f'    <collision><geometry><mesh filename="{MESH}/link_{index}.stl"/></geometry></collision>\n'
            "  </link>\n"
        )
    for index, (name, xyz, rpy, range_deg, speed_deg, torque) in enumerate(JOINTS):
        limit = math.radians(range_deg)
        parts.append(
            f'  <joint name="{name}" type="revolute">\n'
            f'    <parent link="iiwa_link_{index}"/><child link="iiwa_link_{index + 1}"/>\n'
            f'    <origin xyz="{_f(xyz)}" rpy="{_f(rpy)}"/><axis xyz="0 0 1"/>\n'
            f'    <limit lower="{-limit:.10g}" upper="{limit:.10g}" '
            f'velocity="{math.radians(speed_deg):.10g}" effort="{torque:g}"/>\n'
            f'    <dynamics damping="{JOINT_DAMPING:g}"/>\n'
            "  </joint>\n"
        )
    parts.append(
        _frame_link("iiwa_link_flange") + '  <joint name="iiwa_joint_flange" type="fixed">\n'
        '    <parent link="iiwa_link_7"/><child link="iiwa_link_flange"/>\n'
        f'    <origin xyz="0 0 {FLANGE_OFFSET:g}" rpy="0 0 0"/>\n'
        "  </joint>\n"
    )
    return "".join(parts)


def _gripper() -> str:
    palm_x, palm_y, palm_z = PALM_SIZE
    finger_w, finger_t, finger_l = FINGER_SIZE
    finger_inertia = _box_inertia(FINGER_MASS, FINGER_SIZE)
    parts = [
        '  <link name="gripper_palm">\n'
        + _inertial(PALM_MASS, (0, 0, palm_z / 2), _box_inertia(PALM_MASS, PALM_SIZE))
        + f'    <visual><origin xyz="0 0 {palm_z / 2:g}"/><geometry><box size="{_f(PALM_SIZE)}"/>'
        '</geometry><material name="palm"><color rgba="0.15 0.15 0.15 1"/></material></visual>\n'
        f'    <collision><origin xyz="0 0 {palm_z / 2:g}"/><geometry><box size="{_f(PALM_SIZE)}"/>'
        "</geometry></collision>\n"
        "  </link>\n"
        '  <joint name="gripper_mount" type="fixed">\n'
        '    <parent link="iiwa_link_flange"/><child link="gripper_palm"/>\n'
        '    <origin xyz="0 0 0" rpy="0 0 0"/>\n'
        "  </joint>\n"
    ]
    for side, sign in (("left", 1), ("right", -1)):
        # At joint position 0 the pad (inner face) lies on the palm's centre plane:
        # the fingers touch; each opens by its joint position.
        center = (0, sign * finger_t / 2, finger_l / 2)
        parts.append(
            f'  <link name="gripper_finger_{side}">\n'
            + _inertial(FINGER_MASS, center, finger_inertia)
            + f'    <visual><origin xyz="{_f(center)}"/><geometry><box size="{_f(FINGER_SIZE)}"/>'
            '</geometry><material name="finger"><color rgba="0.6 0.6 0.65 1"/></material></visual>\n'
            f'    <collision><origin xyz="{_f(center)}"/><geometry><box size="{_f(FINGER_SIZE)}"/>'
            "</geometry></collision>\n"
            f'    <contact><lateral_friction value="{FINGER_FRICTION:g}"/>'
            '<spinning_friction value="0.003"/><rolling_friction value="0.0001"/></contact>\n'
            "  </link>\n"
            f'  <joint name="gripper_finger_{side}_joint" type="prismatic">\n'
            f'    <parent link="gripper_palm"/><child link="gripper_finger_{side}"/>\n'
            f'    <origin xyz="0 0 {palm_z:g}" rpy="0 0 0"/><axis xyz="0 {sign} 0"/>\n'
            f'    <limit lower="0" upper="{FINGER_TRAVEL:g}" velocity="{FINGER_SPEED:g}" '
            f'effort="{FINGER_FORCE:g}"/>\n'
            '    <dynamics damping="1.0"/>\n'
            "  </joint>\n"
        )
    parts.append(
        _frame_link("tcp") + '  <joint name="tcp_joint" type="fixed">\n'
        '    <parent link="gripper_palm"/><child link="tcp"/>\n'
        f'    <origin xyz="0 0 {TCP_DEPTH:g}" rpy="0 0 0"/>\n'
        "  </joint>\n"
    )
    return "".join(parts)


def _robot(name: str, body: str) -> str:
    return (
        '<?xml version="1.0"?>\n'
        "<!-- Generated by assets/urdf/build_urdfs.py: edit that file, not this one. -->\n"
        f'<robot name="{name}">\n{body}</robot>\n'
    )


def _box_body(name: str, size, mass: float, rgba: str, friction: float, origin_z: float) -> str:
    inertia = _box_inertia(mass, size) if mass > 0 else (0, 0, 0)
    return _robot(
        name,
        f'  <link name="{name}">\n'
        + _inertial(mass, (0, 0, origin_z), inertia)
        + f'    <visual><origin xyz="0 0 {origin_z:g}"/><geometry><box size="{_f(size)}"/></geometry>'
        f'<material name="{name}_color"><color rgba="{rgba}"/></material></visual>\n'
        f'    <collision><origin xyz="0 0 {origin_z:g}"/><geometry><box size="{_f(size)}"/>'
        "</geometry></collision>\n"
        f'    <contact><lateral_friction value="{friction:g}"/><spinning_friction value="0.002"/>'
        '<rolling_friction value="0.0001"/></contact>\n'
        "  </link>\n",
    )


def build() -> dict[str, str]:
    arm = _arm_links()
    return {
        "iiwa14.urdf": _robot("iiwa14", arm),
        "iiwa14_gripper.urdf": _robot("iiwa14_gripper", arm + _gripper()),
        # The cube's frame is its centre; 4.5 cm, 100 g.
        "cube.urdf": _box_body("cube", (0.045, 0.045, 0.045), 0.1, "0.1 0.6 0.2 1", 1.0, 0.0),
        # The table's frame is the middle of its top surface, which is the robot's base plane.
        "table.urdf": _box_body("table", (1.4, 1.2, 0.05), 0.0, "0.55 0.45 0.35 1", 0.8, -0.025),
    }


if __name__ == "__main__":
    for filename, text in build().items():
        (HERE / filename).write_text(text)
        print(f"wrote {HERE / filename}")
