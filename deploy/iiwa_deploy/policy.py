"""ONNX Runtime inference set up for a small network called at 20-100 Hz inside a control loop.

Latency, not throughput, matters: one thread (no thread-pool hand-off, no contention with the
loop on a 2-4 core controller PC), no spinning (a spinning pool would burn the core the loop
needs between calls), sequential execution, full graph optimisation, and I/O bound once to
preallocated buffers so a step allocates nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .config import RobotConfig
from .contract import (
    ACTION_OUTPUT_NAME,
    OBSERVATION_INPUT_NAME,
    ContractError,
    PolicyContract,
    check_compatibility,
    check_model_io,
    read_contract,
    verify_model_integrity,
)

DEFAULT_WARMUP_RUNS = 50


def low_latency_session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def create_session(model_path: str | Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(model_path),
            sess_options=low_latency_session_options(),
            providers=["CPUExecutionProvider"],
        )
    except Exception as error:  # onnxruntime raises several unrelated types for a bad file
        raise ContractError(f"{model_path}: ONNX Runtime cannot load the model: {error}") from None


class OnnxPolicy:
    """A batch-1 deterministic policy: `act(observation)` returns the action in [-1, 1]."""

    def __init__(self, session: ort.InferenceSession, contract: PolicyContract) -> None:
        check_model_io(contract, session)
        self.contract = contract
        self._session = session
        self._input = np.zeros((1, contract.observation_size), dtype=np.float32)
        self._output = np.zeros((1, contract.action_size), dtype=np.float32)
        # OrtValues over the numpy buffers share their memory, so writing `_input` in place is
        # all a step needs before running the binding.
        self._binding = session.io_binding()
        self._binding.bind_ortvalue_input(
            OBSERVATION_INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(self._input)
        )
        self._binding.bind_ortvalue_output(
            ACTION_OUTPUT_NAME, ort.OrtValue.ortvalue_from_numpy(self._output)
        )

    def act(self, observation: np.ndarray) -> np.ndarray:
        """Action for one observation; a view of an internal buffer, overwritten next call."""
        self._input[0] = observation
        self._session.run_with_iobinding(self._binding)
        return self._output[0]

    def warm_up(self, runs: int = DEFAULT_WARMUP_RUNS) -> float:
        """Run the model on zeros so first-call allocations happen before the loop; worst s."""
        worst = 0.0
        zeros = np.zeros(self.contract.observation_size, dtype=np.float32)
        for _ in range(runs):
            start = time.perf_counter()
            self.act(zeros)
            worst = max(worst, time.perf_counter() - start)
        return worst


def load_policy(
    model_path: str | Path,
    robot: RobotConfig,
    warmup_runs: int = DEFAULT_WARMUP_RUNS,
) -> tuple[OnnxPolicy, int]:
    """Load, check against the robot, warm up; returns the policy and robot steps per action."""
    path = Path(model_path)
    if not path.is_file():
        raise ContractError(f"{path}: no such model file")
    session = create_session(path)
    contract = read_contract(session, path)
    verify_model_integrity(contract, path)
    steps_per_action = check_compatibility(contract, robot)
    policy = OnnxPolicy(session, contract)
    policy.warm_up(warmup_runs)
    return policy, steps_per_action
