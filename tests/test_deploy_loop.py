"""Closed loop over loopback UDP with the fake robot, link faults, the CLI, and the proof that
the runtime needs none of torch, pybullet, gymnasium or iiwa_rl."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402
from iiwa_deploy.cli import main, run_policy  # noqa: E402
from iiwa_deploy.contract import ContractError  # noqa: E402
from iiwa_deploy.fake_robot import FakeRobot, FaultInjection, NumpyPlant  # noqa: E402
from iiwa_deploy.kinematics import iiwa14_r820_chain  # noqa: E402
from iiwa_deploy.loop import LoopSummary  # noqa: E402
from iiwa_deploy.robot import UdpRobot  # noqa: E402

ROBOT = support.ROBOT
START = support.START_POSITIONS
TARGET = START + np.array([0.3, 0.25, -0.2, -0.3, 0.2, 0.25, 0.4])
GOAL = iiwa14_r820_chain().tcp_position(TARGET)
PERIOD = ROBOT.robot_period_s
SETPOINT_LOW = ROBOT.lower + ROBOT.setpoint_margin_rad
SETPOINT_HIGH = ROBOT.upper - ROBOT.setpoint_margin_rad


@pytest.fixture
def reach_model(tmp_path: Path) -> Path:
    contract = support.make_contract()
    weights, bias = support.proportional_weights(contract, TARGET)
    return support.write_policy(tmp_path, contract, weights, bias)


@pytest.fixture
def controller() -> Iterator[UdpRobot]:
    backend = UdpRobot(("127.0.0.1", 0), PERIOD)
    try:
        yield backend
    finally:
        backend.close()


def run_against_fake_robot(
    model: Path, backend: UdpRobot, faults: FaultInjection | None = None, **run_arguments: object
) -> tuple[LoopSummary, FakeRobot]:
    fake = FakeRobot(backend.local_address, NumpyPlant(ROBOT.velocity), PERIOD, START, faults)
    fake.start(duration_s=20.0)  # a bound in case the loop under test misbehaves
    try:
        summary = run_policy(model, backend, goal=GOAL, **run_arguments)  # type: ignore[arg-type]
    finally:
        fake.close()
    return summary, fake


def assert_setpoints_safe(fake: FakeRobot) -> np.ndarray:
    setpoints = np.array(fake.record.setpoints)
    assert len(setpoints) > 0
    assert np.all(np.isfinite(setpoints))
    assert np.all(setpoints >= SETPOINT_LOW) and np.all(setpoints <= SETPOINT_HIGH)
    return setpoints


def test_proportional_policy_reaches_the_goal_over_loopback_udp(
    reach_model: Path, controller: UdpRobot
) -> None:
    summary, fake = run_against_fake_robot(
        reach_model, controller, duration_s=8.0, stop_on_success=True
    )
    assert summary.stop_reason == "success", summary.format()
    assert summary.success and summary.final_distance_m <= 0.02
    assert not summary.faults
    assert summary.policy_steps >= 5
    assert summary.cycles >= summary.policy_steps * 7  # 8 robot periods per policy step
    assert summary.inference.count == summary.policy_steps
    assert 0.0 < summary.inference.p50_s < PERIOD
    assert summary.compute.p99_s < PERIOD
    assert summary.state_interval.p50_s == pytest.approx(PERIOD, rel=0.5)
    assert summary.link["malformed"] == 0
    setpoints = assert_setpoints_safe(fake)
    # Consecutive setpoints (one per answered state) move at most v_max * period per joint.
    steps = np.abs(np.diff(setpoints, axis=0))
    assert np.all(steps <= ROBOT.interpolator_velocity * PERIOD + 1e-9)
    assert "SUCCESS" in summary.format()


def test_link_faults_are_dropped_without_a_fault_or_a_bad_setpoint(
    reach_model: Path, controller: UdpRobot
) -> None:
    faults = FaultInjection(
        drop_every=7,
        duplicate_every=5,
        reorder_every=11,
        malformed_every=13,
    )
    summary, fake = run_against_fake_robot(reach_model, controller, faults, duration_s=1.5)
    assert not summary.faults, summary.format()
    link = summary.link
    assert link["malformed"] >= 10, link  # truncated datagrams
    assert link["duplicate_or_reordered"] >= 20, link
    assert summary.cycles > 150
    assert_setpoints_safe(fake)


def test_robot_going_silent_latches_a_stale_fault_and_it_gets_a_hold_when_back(
    reach_model: Path, controller: UdpRobot, tmp_path: Path
) -> None:
    faults = FaultInjection(silent_from_cycle=80, silent_cycles=60)  # 300 ms > 100 ms timeout
    log = tmp_path / "cycles.csv"
    summary, fake = run_against_fake_robot(
        reach_model, controller, faults, duration_s=1.2, csv_path=log
    )
    assert summary.fault_latched
    assert summary.faults[0].reason.startswith("stale state")
    assert summary.missed_deadlines >= 1
    assert fake.record.fault_flags_seen > 20
    setpoints = assert_setpoints_safe(fake)
    held = setpoints[-fake.record.fault_flags_seen :]
    assert np.all(held == held[0])

    with log.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary.cycles
    assert rows[0]["q_iiwa_joint_1"] and rows[0]["setpoint_iiwa_joint_7"]
    assert rows[-1]["fault_latched"] == "1" and rows[0]["fault_latched"] == "0"
    assert sum(int(row["missed_deadline"]) for row in rows) == summary.missed_deadlines


def test_run_policy_refuses_before_commanding_anything(
    tmp_path: Path, controller: UdpRobot
) -> None:
    bad = support.make_contract()
    bad["observation"]["layout"][3] = {"name": "cube_position", "size": 3}
    model = support.write_policy(tmp_path, bad)
    with pytest.raises(ContractError, match="cube_position"):
        run_policy(model, controller, duration_s=0.1)
    good = support.write_policy(tmp_path, support.make_contract())
    with pytest.raises(ContractError, match="outside the training goal box"):
        run_policy(good, controller, goal=[2.0, 0.0, 0.5], duration_s=0.1)


def test_cli_runs_a_rehearsal_against_the_in_process_fake_robot(
    reach_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    goal = [f"{v:.6f}" for v in GOAL]
    code = main(
        [
            "--log-level",
            "WARNING",
            "run",
            "--model",
            str(reach_model),
            "--robot",
            "fake",
            "--bind",
            "127.0.0.1:0",
            "--duration",
            "6",
            "--stop-on-success",
            "--goal",
            *goal,
        ]
    )
    output = capsys.readouterr().out
    assert code == 0, output
    assert "SUCCESS" in output and "inference:" in output and "faults: none" in output


def test_cli_check_and_refusal_exit_codes(
    reach_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--model", str(reach_model)]) == 0
    assert "contract OK" in capsys.readouterr().out
    stale = support.make_contract(success_threshold_m=0.5)
    reach_model.with_suffix(".json").write_text(json.dumps(stale))
    assert main(["check", "--model", str(reach_model)]) == 2
    assert "refused:" in capsys.readouterr().err


def test_fake_robot_module_runs_as_a_process(controller: UdpRobot) -> None:
    port = controller.local_address[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "iiwa_deploy.fake_robot", "--port", str(port), "--duration", "0.5"],
        env=support.deploy_subprocess_environment(),
        cwd=support.DEPLOY_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = controller.receive_state(5.0)
        assert first is not None
        np.testing.assert_allclose(first.joint_positions, START, atol=1e-9)
        target = first.joint_positions + 0.01
        for _ in range(20):
            state = controller.receive_state(1.0)
            assert state is not None
            controller.send_setpoint(state.sequence, target, fault=False)
        output = process.communicate(timeout=10)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "setpoints received" in output


BLOCKED = ("torch", "pybullet", "gymnasium", "iiwa_rl", "onnx")

IMPORT_GUARD_SCRIPT = textwrap.dedent("""
    import importlib.abc
    import json
    import sys

    BLOCKED = {blocked!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in BLOCKED:
        sys.modules[name] = None

    import iiwa_deploy
    from iiwa_deploy import FakeRobot, NumpyPlant, UdpRobot, load_robot_config, run_policy

    robot = load_robot_config()
    with UdpRobot(("127.0.0.1", 0), robot.robot_period_s) as backend:
        fake = FakeRobot(backend.local_address, NumpyPlant(robot.velocity),
                         robot.robot_period_s, {start!r})
        fake.start(duration_s=10.0)
        try:
            summary = run_policy({model!r}, backend, goal={goal!r}, duration_s=0.6)
        finally:
            fake.close()
    loaded = sorted(n for n in sys.modules
                    if n.split(".")[0] in BLOCKED and sys.modules[n] is not None)
    print(json.dumps({{"cycles": summary.cycles, "policy_steps": summary.policy_steps,
                       "faults": [f.reason for f in summary.faults], "loaded": loaded}}))
""")


def test_runtime_imports_and_runs_with_training_packages_unavailable(reach_model: Path) -> None:
    script = IMPORT_GUARD_SCRIPT.format(
        blocked=BLOCKED, start=START.tolist(), model=str(reach_model), goal=GOAL.tolist()
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        env=support.deploy_subprocess_environment(),
        cwd=reach_model.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["faults"] == []
    assert result["cycles"] > 50 and result["policy_steps"] > 5
