"""The policy contract: what a policy.onnx expects and produces, checked before it may move a robot.

The exporter stores the contract as JSON in the ONNX model's metadata under
`CONTRACT_METADATA_KEY` (authoritative) and writes a `policy.json` sidecar for humans. Every
check here refuses with a `ContractError` whose message says exactly what differs, because the
operator reading it is deciding whether a model may drive a real arm.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np

from .actuation import CARTESIAN_ACTION_MODE, CARTESIAN_ACTION_SIZE, JOINT_ACTION_MODES
from .config import RobotConfig
from .grasp import GraspTask, parse_grasp_task
from .kinematics import KinematicChain
from .observation import (
    FINGER_CONTACTS,
    GOAL,
    GRIPPER,
    JOINT_STATE,
    OBJECT_POSE,
    OBSERVATION_TERMS,
    PREVIOUS_ACTION,
    TCP_POSE,
)
from .schema import (
    CONTROLLER_PHRASING,
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    from_mapping,
)

CONTRACT_METADATA_KEY = "iiwa_rl_contract"
# 2: the policy was trained through the controller's own actuation (interpolator, timing);
# the contract says which (`actuation`), and a version 1 model, trained without, is refused.
SUPPORTED_FORMAT_VERSION = 2
OBSERVATION_INPUT_NAME = "observation"
ACTION_OUTPUT_NAME = "action"
ACTION_MODES = (*JOINT_ACTION_MODES, CARTESIAN_ACTION_MODE)

# What the controller has a source for: measured joint state, forward kinematics, the goal
# and its own previous action. A term reading anything else (an object pose, the gripper)
# cannot be built here.
CONTROLLER_OBSERVATION_INPUTS = frozenset({JOINT_STATE, TCP_POSE, GOAL, PREVIOUS_ACTION})
BUILDABLE_OBSERVATION_TERMS = tuple(
    name for name, term in OBSERVATION_TERMS.items() if term.inputs <= CONTROLLER_OBSERVATION_INPUTS
)
# A grasp contract (one with a `grasp` section) adds what protocol version 2 carries: the
# object pose (OBJECT messages from a pose estimator) and the gripper (its width and, from a
# gripper that senses them, the finger contacts, in the STATE). The loop checks at the first
# state that the robot really sends them.
GRASP_OBSERVATION_INPUTS = CONTROLLER_OBSERVATION_INPUTS | {OBJECT_POSE, GRIPPER, FINGER_CONTACTS}
GRASP_BUILDABLE_OBSERVATION_TERMS = tuple(
    name for name, term in OBSERVATION_TERMS.items() if term.inputs <= GRASP_OBSERVATION_INPUTS
)

# Contracts carry limits as floats that went through a JSON round trip and maybe a degree to
# radian conversion on the training side; anything beyond this is a different robot model.
LIMIT_TOLERANCE = 1e-4
EFFORT_TOLERANCE_NM = 1e-3
PERIOD_RATIO_TOLERANCE = 1e-6


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ContractError(ValueError):
    """The model, its contract or the robot configuration do not fit together."""


@dataclass(frozen=True)
class ObservationPiece:
    name: str
    size: int
    offset: int


@dataclass(frozen=True)
class TrainedActuation:
    """The plant between policy and joints the policy was trained through (contract
    `actuation`): the robot period, the command delay, the interpolator's limits and the
    target margin, all from the robot configuration used in training."""

    robot_period_s: float
    command_delay_periods: int
    interpolator_velocity: np.ndarray
    interpolator_acceleration: np.ndarray
    target_margin_rad: float


@dataclass(frozen=True)
class PolicyContract:
    """A validated format_version 2 contract. Arrays are float64 in the contract's joint order."""

    raw: Mapping[str, Any]
    env_id: str
    observation_size: int
    observation_layout: tuple[ObservationPiece, ...]
    action_size: int
    action_mode: str
    action_scale: float
    joint_names: tuple[str, ...]
    home_joint_positions: np.ndarray
    control_period_s: float
    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    kinematics: KinematicChain
    goal_low: np.ndarray
    goal_high: np.ndarray
    success_threshold_m: float
    success_hold_s: float
    actuation: TrainedActuation
    initial_joint_noise_rad: float
    simulation: Mapping[str, Any]
    config_sha256: str
    versions: Mapping[str, str]
    grasp: GraspTask | None = None  # the grasp's section; None for a reach

    @property
    def joint_count(self) -> int:
        return len(self.joint_names)

    # sha256 of the model's graph and weights (iiwa_deploy.integrity.model_sha256), written
    # at export; "" in a contract exported before it existed (such a model is refused).
    model_sha256: str = ""

    @property
    def goal_center(self) -> np.ndarray:
        return (self.goal_low + self.goal_high) / 2.0

    def observation_term_layout(self) -> list[tuple[str, int]]:
        return [(piece.name, piece.size) for piece in self.observation_layout]


class _SessionLike(Protocol):
    def get_modelmeta(self) -> Any: ...
    def get_inputs(self) -> Any: ...
    def get_outputs(self) -> Any: ...


# ------------------------------------------------------------------ the document
# The contract's JSON, section by section, read by the project's one validator (schema.py):
# types, finiteness, ranges and unknown keys inside a section, each error naming the key
# ("contract.action.scale: must be a positive number, got 0"). `parse_contract` then checks
# what spans sections (sizes against the joint count, the layout against the terms).


@dataclass(frozen=True)
class _ActionSection:
    size: PositiveInt
    mode: str
    scale: PositiveFloat
    joint_names: tuple[str, ...]
    home_joint_positions: tuple[float, ...]


@dataclass(frozen=True)
class _ObservationPieceEntry:
    name: str
    size: int


@dataclass(frozen=True)
class _ObservationSection:
    size: int
    layout: tuple[_ObservationPieceEntry, ...]


@dataclass(frozen=True)
class _JointLimitsSection:
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    velocity: Annotated[tuple[float, ...], Range(gt=0)]
    effort: tuple[float, ...]


@dataclass(frozen=True)
class _GoalSamplingSection:
    low: tuple[float, float, float]
    high: tuple[float, float, float]


@dataclass(frozen=True)
class _StartSection:
    initial_joint_noise_rad: NonNegativeFloat


@dataclass(frozen=True)
class _ActuationSection:
    robot_period_s: PositiveFloat
    command_delay_periods: NonNegativeInt
    interpolator_velocity: Annotated[tuple[float, ...], Range(gt=0)]
    interpolator_acceleration: Annotated[tuple[float, ...], Range(gt=0)]
    target_margin_rad: NonNegativeFloat


@dataclass(frozen=True)
class _ContractDocument:
    """The keys the controller reads; others (the training config, its algorithm, the
    normalisation statistics baked into the graph) are the exporter's record and pass."""

    format_version: Any  # checked first, on the raw mapping: other versions read differently
    action: _ActionSection
    observation: _ObservationSection
    control_period_s: PositiveFloat
    joint_limits: _JointLimitsSection
    kinematics: Mapping[str, Any]  # KinematicChain.from_contract reads it
    actuation: _ActuationSection
    start: _StartSection
    goal_sampling: _GoalSamplingSection | None = None  # a reach's; a grasp has none
    success_threshold_m: PositiveFloat | None = None
    success_hold_s: NonNegativeFloat | None = None
    grasp: Any = None  # iiwa_deploy.grasp.parse_grasp_task reads it
    simulation: Mapping[str, Any] = field(default_factory=dict)
    env_id: str = ""
    config_sha256: str = ""
    model_sha256: str = ""
    versions: Mapping[str, Any] = field(default_factory=dict)


def _joint_vector(values: tuple[float, ...], size: int, where: str) -> np.ndarray:
    if len(values) != size:
        raise ContractError(f"contract{where}: expected {size} numbers, got {len(values)}")
    return np.array(values, dtype=float)


def parse_contract(data: Mapping[str, Any]) -> PolicyContract:
    """Validate the contract's own structure (not yet against a model or a robot)."""
    if not isinstance(data, Mapping):
        raise ContractError(f"contract: expected a JSON object, got {type(data).__name__}")
    if "format_version" not in data:
        raise ContractError("contract.format_version: required key is missing")
    version = data["format_version"]
    if version != SUPPORTED_FORMAT_VERSION or isinstance(version, bool):
        raise ContractError(
            f"contract.format_version: this runtime reads version {SUPPORTED_FORMAT_VERSION}, "
            f"the model has {version!r}"
        )
    try:
        document = from_mapping(
            _ContractDocument, data, "contract", CONTROLLER_PHRASING, ignore_unknown=True
        )
    except ConfigError as error:
        raise ContractError(str(error)) from None

    action = document.action
    mode = action.mode
    if mode not in ACTION_MODES:
        raise ContractError(
            f"contract.action.mode: unknown action mode {mode!r}; this runtime supports "
            f"{', '.join(ACTION_MODES)}"
        )
    grasp = None
    if document.grasp is not None:
        try:
            grasp = parse_grasp_task(document.grasp)
        except ValueError as error:
            raise ContractError(str(error)) from None
    if mode == CARTESIAN_ACTION_MODE and grasp is None:
        raise ContractError(
            "contract.grasp: a cartesian policy needs the grasp section (workspace box, yaw "
            "scale, gripper); re-export it with this version of `iiwa-rl export`"
        )
    joint_names = action.joint_names
    joint_count = len(joint_names)
    action_size = action.size
    expected_action = CARTESIAN_ACTION_SIZE if mode == CARTESIAN_ACTION_MODE else joint_count
    if action_size != expected_action:
        raise ContractError(
            f"contract.action.size: {action_size} for mode {mode!r} with {joint_count} joints; "
            f"expected {expected_action}"
        )
    home = _joint_vector(action.home_joint_positions, joint_count, ".action.home_joint_positions")

    observation_size = document.observation.size
    layout = document.observation.layout
    if not layout:
        raise ContractError("contract.observation.layout: expected a non-empty list of pieces")
    buildable = (
        GRASP_BUILDABLE_OBSERVATION_TERMS if grasp is not None else BUILDABLE_OBSERVATION_TERMS
    )
    pieces = []
    offset = 0
    for index, entry in enumerate(layout):
        where = f".observation.layout[{index}]"
        name, size = entry.name, entry.size
        if name not in buildable:
            hint = (
                " (object and gripper terms need a grasp contract, one with a grasp section)"
                if grasp is None and name in GRASP_BUILDABLE_OBSERVATION_TERMS
                else ""
            )
            source = "joint state" if grasp is None else "the robot state and the object pose"
            raise ContractError(
                f"contract{where}: observation piece '{name}' cannot be built from {source} "
                f"on the controller; this runtime builds only: {', '.join(buildable)}{hint}"
            )
        expected_size = OBSERVATION_TERMS[name].resolved_size(joint_count, action_size)
        if size != expected_size:
            raise ContractError(
                f"contract{where}: piece '{name}' has size {size}, expected {expected_size}"
            )
        if any(piece.name == name for piece in pieces):
            raise ContractError(f"contract{where}: piece '{name}' appears twice")
        pieces.append(ObservationPiece(name=name, size=size, offset=offset))
        offset += size
    if offset != observation_size:
        raise ContractError(
            f"contract.observation.size is {observation_size} but the layout pieces add up to "
            f"{offset}"
        )

    limits = document.joint_limits
    lower = _joint_vector(limits.lower, joint_count, ".joint_limits.lower")
    upper = _joint_vector(limits.upper, joint_count, ".joint_limits.upper")
    velocity = _joint_vector(limits.velocity, joint_count, ".joint_limits.velocity")
    effort = _joint_vector(limits.effort, joint_count, ".joint_limits.effort")
    if np.any(lower >= upper):
        raise ContractError("contract.joint_limits: every lower limit must be below its upper")
    if np.any(home < lower) or np.any(home > upper):
        raise ContractError("contract.action.home_joint_positions: outside the joint limits")

    try:
        chain = KinematicChain.from_contract(document.kinematics)
    except ValueError as error:
        raise ContractError(f"contract.{error}") from None
    if chain.joint_names != tuple(joint_names):
        raise ContractError(
            f"contract.kinematics.joints: joint names {list(chain.joint_names)} differ from "
            f"action.joint_names {list(joint_names)}"
        )

    if grasp is not None and document.goal_sampling is None:
        # A grasp has no goal; its success test is the grasp section's (lift, hold).
        goal_low = goal_high = np.zeros(3)
        threshold, hold = grasp.lift_height_m, grasp.hold_s
    else:
        for key in ("goal_sampling", "success_threshold_m", "success_hold_s"):
            if getattr(document, key) is None:
                raise ContractError(f"contract.{key}: required key is missing")
        goal_low = np.array(document.goal_sampling.low, dtype=float)
        goal_high = np.array(document.goal_sampling.high, dtype=float)
        if np.any(goal_low > goal_high):
            raise ContractError("contract.goal_sampling: low must not exceed high")
        threshold, hold = document.success_threshold_m, document.success_hold_s
    trained = document.actuation
    actuation = TrainedActuation(
        trained.robot_period_s,
        trained.command_delay_periods,
        _joint_vector(
            trained.interpolator_velocity, joint_count, ".actuation.interpolator_velocity"
        ),
        _joint_vector(
            trained.interpolator_acceleration, joint_count, ".actuation.interpolator_acceleration"
        ),
        trained.target_margin_rad,
    )
    model_hash = document.model_sha256
    if model_hash and not _SHA256_HEX.fullmatch(model_hash):
        raise ContractError(
            f"contract.model_sha256: expected 64 lowercase hex digits, got {model_hash!r}"
        )
    return PolicyContract(
        raw=data,
        env_id=document.env_id,
        observation_size=observation_size,
        observation_layout=tuple(pieces),
        action_size=action_size,
        action_mode=mode,
        action_scale=action.scale,
        joint_names=tuple(joint_names),
        home_joint_positions=home,
        control_period_s=document.control_period_s,
        lower=lower,
        upper=upper,
        velocity=velocity,
        effort=effort,
        kinematics=chain,
        goal_low=goal_low,
        goal_high=goal_high,
        success_threshold_m=threshold,
        success_hold_s=hold,
        actuation=actuation,
        initial_joint_noise_rad=document.start.initial_joint_noise_rad,
        simulation=dict(document.simulation),
        config_sha256=document.config_sha256,
        versions={str(k): str(v) for k, v in document.versions.items()},
        grasp=grasp,
        model_sha256=model_hash,
    )


def contract_text_from_session(session: _SessionLike, model_path: str | Path) -> str:
    """The contract JSON from the model metadata; refuses a model without one."""
    metadata = session.get_modelmeta().custom_metadata_map
    if CONTRACT_METADATA_KEY not in metadata:
        raise ContractError(
            f"{model_path}: the ONNX model has no '{CONTRACT_METADATA_KEY}' metadata; export it "
            "with the iiwa-rl exporter (a policy.json sidecar alone is not trusted)"
        )
    return metadata[CONTRACT_METADATA_KEY]


def sidecar_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def _differences(left: Any, right: Any, where: str = "") -> list[str]:
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        found = []
        for key in sorted(set(left) | set(right), key=str):
            path = f"{where}.{key}" if where else str(key)
            if key not in left:
                found.append(f"{path} only in the sidecar")
            elif key not in right:
                found.append(f"{path} only in the ONNX metadata")
            else:
                found.extend(_differences(left[key], right[key], path))
        return found
    if left != right:
        return [f"{where or 'contract'}: ONNX metadata {left!r} vs sidecar {right!r}"]
    return []


def read_contract(session: _SessionLike, model_path: str | Path) -> PolicyContract:
    """Parse the model's contract, refusing if a sidecar policy.json exists and differs."""
    text = contract_text_from_session(session, model_path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ContractError(f"{model_path}: contract metadata is not valid JSON: {error}") from None
    sidecar = sidecar_path(model_path)
    if sidecar.exists():
        try:
            sidecar_data = json.loads(sidecar.read_text())
        except json.JSONDecodeError as error:
            raise ContractError(f"{sidecar}: not valid JSON: {error}") from None
        differences = _differences(data, sidecar_data)
        if differences:
            shown = "; ".join(differences[:5])
            more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
            raise ContractError(
                f"{sidecar} differs from the contract inside {Path(model_path).name}: {shown}"
                f"{more}. Re-export the model or remove the stale sidecar."
            )
    try:
        return parse_contract(data)
    except ContractError as error:
        raise ContractError(f"{model_path}: {error}") from None


def verify_model_integrity(contract: PolicyContract, model_path: str | Path) -> None:
    """Refuse a model whose graph or weights are not the ones exported with this contract."""
    from .integrity import ModelFormatError, file_sha256

    if not contract.model_sha256:
        raise ContractError(
            f"{model_path}: the contract has no model_sha256, so the graph and weights cannot "
            "be verified; re-export the policy with `iiwa-rl export RUN_DIR`"
        )
    try:
        actual = file_sha256(model_path)
    except (OSError, ModelFormatError) as error:
        raise ContractError(f"{model_path}: cannot hash the model: {error}") from None
    if actual != contract.model_sha256:
        raise ContractError(
            f"{model_path}: the graph or weights changed since export (sha256 {actual[:16]}... "
            f"but the contract says {contract.model_sha256[:16]}...): the file is corrupted "
            "or was edited; restore or re-export it"
        )


def check_model_io(contract: PolicyContract, session: _SessionLike) -> None:
    """The ONNX graph must take [batch, observation_size] float32 and give [batch, action_size]."""
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != OBSERVATION_INPUT_NAME:
        raise ContractError(
            f"model inputs are {[i.name for i in inputs]}; expected exactly one named "
            f"'{OBSERVATION_INPUT_NAME}'"
        )
    if not any(o.name == ACTION_OUTPUT_NAME for o in outputs):
        raise ContractError(
            f"model outputs are {[o.name for o in outputs]}; expected one named "
            f"'{ACTION_OUTPUT_NAME}'"
        )
    output = next(o for o in outputs if o.name == ACTION_OUTPUT_NAME)
    for tensor, role, size in (
        (inputs[0], "observation", contract.observation_size),
        (output, "action", contract.action_size),
    ):
        if tensor.type != "tensor(float)":
            raise ContractError(f"model {role} has type {tensor.type}; expected tensor(float)")
        shape = list(tensor.shape)
        if len(shape) != 2:
            raise ContractError(f"model {role} has shape {shape}; expected [batch, {size}]")
        batch, width = shape
        if isinstance(batch, int) and batch > 1:
            raise ContractError(f"model {role} has batch size {batch}; batch 1 is required")
        if isinstance(width, int) and width != size:
            raise ContractError(
                f"contract {role} size is {size} but the ONNX {role} tensor has width {width}"
            )


def _compare_vectors(
    name: str,
    contract_values: np.ndarray,
    robot_values: np.ndarray,
    joint_names: Sequence[str],
    tolerance: float,
) -> None:
    mismatched = np.flatnonzero(np.abs(contract_values - robot_values) > tolerance)
    if mismatched.size:
        details = ", ".join(
            f"{joint_names[i]}: contract {contract_values[i]:.6g} vs robot {robot_values[i]:.6g}"
            for i in mismatched
        )
        raise ContractError(
            f"joint_limits.{name} of the policy differ from the robot configuration "
            f"(tolerance {tolerance:g}): {details}"
        )


def control_steps_per_policy_step(contract: PolicyContract, robot: RobotConfig) -> int:
    """Robot periods per policy period; refuses a policy period that is not a whole multiple."""
    ratio = contract.control_period_s / robot.robot_period_s
    steps = round(ratio)
    if steps < 1 or abs(ratio - steps) > PERIOD_RATIO_TOLERANCE * max(1.0, ratio):
        raise ContractError(
            f"control_period_s {contract.control_period_s} s is not a whole multiple of the "
            f"robot period {robot.robot_period_s} s (ratio {ratio:.6g})"
        )
    return steps


def _check_actuation(trained: TrainedActuation, robot: RobotConfig) -> None:
    """The interpolator and target margin are part of the plant the policy learned: a robot
    configuration with other values moves the arm differently from training."""
    hint = (
        "run it with the robot configuration it was trained with, or retrain with this one "
        "(env.kwargs.robot_config)"
    )
    for name, trained_values, robot_values in (
        (
            "interpolator velocity (rad/s)",
            trained.interpolator_velocity,
            robot.interpolator_velocity,
        ),
        (
            "interpolator acceleration (rad/s^2)",
            trained.interpolator_acceleration,
            robot.acceleration,
        ),
    ):
        mismatched = np.flatnonzero(
            np.abs(trained_values - robot_values)
            > LIMIT_TOLERANCE * np.maximum(1.0, trained_values)
        )
        if mismatched.size:
            details = ", ".join(
                f"{robot.joint_names[i]}: trained {trained_values[i]:.6g} vs robot "
                f"{robot_values[i]:.6g}"
                for i in mismatched
            )
            raise ContractError(f"{name} differs from training: {details}; {hint}")
    if abs(trained.target_margin_rad - robot.target_margin_rad) > LIMIT_TOLERANCE:
        raise ContractError(
            f"safety.target_margin_rad is {robot.target_margin_rad} rad; the policy was trained "
            f"with {trained.target_margin_rad} rad; {hint}"
        )


def _check_grasp_cell(task: GraspTask, robot: RobotConfig) -> None:
    """The gripper and the cell must be the ones the grasp was trained in: the same full
    opening; a speed and force the gripper limits allow (a weaker grip is another plant);
    the trained TCP target box inside the cell's workspace box."""
    trained, limits = task.gripper, robot.gripper
    if abs(trained.max_width_m - limits.max_width_m) > LIMIT_TOLERANCE:
        raise ContractError(
            f"gripper.max_width_m is {limits.max_width_m} m; the policy was trained with a "
            f"gripper opening {trained.max_width_m} m"
        )
    for name, wanted, allowed in (
        ("speed (m/s)", trained.speed_m_s, limits.max_speed_m_s),
        ("force (N)", trained.force_n, limits.max_force_n),
    ):
        if wanted > allowed * (1.0 + LIMIT_TOLERANCE):
            raise ContractError(
                f"the policy was trained with a gripper {name} of {wanted:g}; the robot "
                f"configuration allows {allowed:g} (gripper section): it would grip differently "
                "from training"
            )
    cell = robot.workspace
    low, high = np.asarray(cell.low), np.asarray(cell.high)
    if np.any(task.workspace_low < low - 1e-9) or np.any(task.workspace_high > high + 1e-9):
        raise ContractError(
            f"the policy's TCP target box {task.workspace_low.tolist()} .. "
            f"{task.workspace_high.tolist()} m is not inside the robot configuration's "
            f"workspace box {list(cell.low)} .. {list(cell.high)} m"
        )
    if abs(task.table_height_m - cell.table_height_m) > 1e-3:
        raise ContractError(
            f"workspace.table_height_m is {cell.table_height_m} m; the policy was trained with "
            f"the table at {task.table_height_m} m (base frame)"
        )


def check_compatibility(contract: PolicyContract, robot: RobotConfig) -> int:
    """Refuse a policy that does not fit this robot; returns robot periods per policy step."""
    if contract.joint_names != robot.joint_names:
        if sorted(contract.joint_names) == sorted(robot.joint_names):
            raise ContractError(
                f"joint order differs: policy {list(contract.joint_names)} vs robot "
                f"{list(robot.joint_names)}"
            )
        raise ContractError(
            f"joint names differ: policy {list(contract.joint_names)} vs robot "
            f"{list(robot.joint_names)}"
        )
    for name in ("lower", "upper", "velocity"):
        _compare_vectors(
            name, getattr(contract, name), getattr(robot, name), robot.joint_names, LIMIT_TOLERANCE
        )
    _compare_vectors(
        "effort", contract.effort, robot.effort, robot.joint_names, EFFORT_TOLERANCE_NM
    )
    _check_actuation(contract.actuation, robot)
    if contract.grasp is not None:
        _check_grasp_cell(contract.grasp, robot)
    if (
        robot.expected_control_period_s is not None
        and abs(contract.control_period_s - robot.expected_control_period_s)
        > PERIOD_RATIO_TOLERANCE * robot.expected_control_period_s
    ):
        raise ContractError(
            f"control_period_s of the policy is {contract.control_period_s} s; the robot "
            f"configuration expects {robot.expected_control_period_s} s"
        )
    return control_steps_per_policy_step(contract, robot)
