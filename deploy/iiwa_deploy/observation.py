"""Builds the policy's observation vector from measured joint state, the goal and the last action.

The formulas mirror the training environment exactly (see the contract description in
deploy/README.md); any drift here silently degrades a policy, so they are tested piece by piece.
"""

from __future__ import annotations

import numpy as np

from .contract import OBSERVATION_PIECE_SIZES, ContractError, PolicyContract


class ObservationBuilder:
    """Fills one preallocated float32 vector per call, in the contract's layout order."""

    def __init__(self, contract: PolicyContract) -> None:
        for piece in contract.observation_layout:
            if piece.name not in OBSERVATION_PIECE_SIZES:
                raise ContractError(f"observation piece '{piece.name}' cannot be built here")
        self._layout = contract.observation_layout
        self._kinematics = contract.kinematics
        self._lower = contract.lower
        self._range = contract.upper - contract.lower
        self._velocity = contract.velocity
        self.buffer = np.zeros(contract.observation_size, dtype=np.float32)
        self.last_tcp_position = np.zeros(3)

    def build(
        self,
        joint_positions: np.ndarray,
        joint_velocities: np.ndarray,
        goal_position: np.ndarray,
        previous_action: np.ndarray,
    ) -> np.ndarray:
        """The observation (a view of `self.buffer`, overwritten by the next call)."""
        tcp = self._kinematics.tcp_position(joint_positions)
        self.last_tcp_position = tcp
        for piece in self._layout:
            target = self.buffer[piece.offset : piece.offset + piece.size]
            if piece.name == "joint_position_normalized":
                target[:] = 2.0 * (joint_positions - self._lower) / self._range - 1.0
            elif piece.name == "joint_velocity_normalized":
                target[:] = joint_velocities / self._velocity
            elif piece.name == "tcp_position":
                target[:] = tcp
            elif piece.name == "goal_position":
                target[:] = goal_position
            elif piece.name == "goal_minus_tcp":
                target[:] = goal_position - tcp
            elif piece.name == "previous_action":
                target[:] = previous_action
        return self.buffer
