"""The safety defects found by trying the controller as a new user would, one test per item
(issue 17): state rate, tracking, non-finite states, a bad first state, the STATE flags,
model integrity, command-line input, readable fault messages."""

from __future__ import annotations

import math
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_safety as scripted  # noqa: E402
import test_deploy_support as support  # noqa: E402
from iiwa_deploy import cli as deploy_cli  # noqa: E402
from iiwa_deploy.cli import EXIT_FAULT, EXIT_REFUSED, run_policy  # noqa: E402
from iiwa_deploy.fake_robot import (  # noqa: E402
    FakeRobot,
    FaultInjection,  # noqa: E402
    NumpyPlant,
)
from iiwa_deploy.integrity import file_sha256, model_sha256  # noqa: E402
from iiwa_deploy.loop import ControlLoop  # noqa: E402
from iiwa_deploy.protocol import (  # noqa: E402
    STATE_COMMANDING_ACTIVE,
    ProtocolError,
    decode_state,
    encode_state,
)
from iiwa_deploy.robot import RobotState, UdpRobot  # noqa: E402
from iiwa_deploy.safety import SafetyMonitor, StateRateMonitor, readable  # noqa: E402

ROBOT = support.ROBOT
START = support.START_POSITIONS
PERIOD = ROBOT.robot_period_s
REACH = Path(__file__).resolve().parents[1] / "assets" / "policies" / "reach" / "policy.onnx"


@pytest.fixture
def hold_model(tmp_path: Path) -> Path:
    """A policy that wants to move every joint (a constant action)."""
    contract = support.make_contract()
    return support.write_policy(tmp_path, contract, bias=np.full(7, 0.5))


def run_udp(model: Path, robot_period: float, faults=None, **options):
    backend = UdpRobot(("127.0.0.1", 0), PERIOD)
    fake = FakeRobot(backend.local_address, NumpyPlant(ROBOT.velocity), robot_period, START, faults)
    fake.start(duration_s=20.0)
    try:
        summary = run_policy(model, backend, goal=[0.5, 0.0, 0.5], **options)
    finally:
        fake.close()
        backend.close()
    return summary, fake


# 1 ------------------------------------------------------------------ state rate
def test_state_rate_monitor_measures_time_per_sequence_step() -> None:
    monitor = StateRateMonitor(0.005, window_s=0.2, tolerance=0.2)
    for k in range(1, 60):
        assert monitor.observe(k * 0.005, k) is None
    assert monitor.verified and monitor.measured_period_s == pytest.approx(0.005)
    # States the loop never saw (every other one) do not change the measure.
    skipping = StateRateMonitor(0.005, window_s=0.2, tolerance=0.2)
    for k in range(1, 60):
        assert skipping.observe(k * 0.010, 2 * k) is None
    fast = StateRateMonitor(0.005, window_s=0.2, tolerance=0.2)
    reasons = [fast.observe(k * 0.001, k) for k in range(1, 300)]
    reason = next(r for r in reasons if r is not None)
    assert "every 1.000 ms" in reason and "5.000 ms" in reason and not fast.verified


def test_a_robot_sending_every_millisecond_latches_before_the_arm_moves(hold_model) -> None:
    summary, fake = run_udp(hold_model, robot_period=0.001, duration_s=1.0)
    assert summary.fault_latched and "arrive every" in summary.faults[0].reason, summary.format()
    assert summary.policy_steps == 0
    setpoints = np.array(fake.record.setpoints)
    np.testing.assert_allclose(setpoints, np.broadcast_to(START, setpoints.shape), atol=1e-12)
    assert deploy_cli.exit_code(summary) == EXIT_FAULT


def test_a_robot_at_the_configured_period_runs_after_the_check(hold_model) -> None:
    summary, _ = run_udp(hold_model, robot_period=PERIOD, duration_s=0.5)
    assert not summary.faults, summary.format()
    assert summary.policy_steps >= 10


# 2 ---------------------------------------------------------------- tracking gate
class FollowingRobot(scripted.ScriptedRobot):
    """Measures exactly the last setpoint it got, except where a script says otherwise."""

    def __init__(self, count: int, offset_from: int = 0, offset: np.ndarray | None = None):
        super().__init__([])
        self.count, self.offset_from, self.offset = count, offset_from, offset
        self.sequence = 0
        self.measured = START.copy()

    def receive_state(self, timeout_s: float) -> RobotState | None:
        if self.sequence >= self.count:
            raise KeyboardInterrupt
        self.sequence += 1
        if self.sent:
            self.measured = self.sent[-1].joint_positions.copy()
        positions = self.measured.copy()
        if self.offset_from and self.sequence >= self.offset_from:
            positions = positions + self.offset
        return RobotState(self.sequence, self.sequence * PERIOD, positions, np.zeros(7))


def run_following(robot: scripted.ScriptedRobot, action: float = 1.0):
    loop = ControlLoop(
        scripted.ScriptedPolicy([np.full(7, action)]),
        scripted.CONTRACT,
        ROBOT.replace(stale_timeout_s=0.01),
        robot,
        scripted.GOAL,
        8,
    )
    return loop.run(first_state_timeout_s=1.0)


def test_a_measured_joint_that_jumps_by_1_rad_latches_tracking() -> None:
    offset = np.zeros(7)
    offset[0] = 1.0
    robot = FollowingRobot(120, offset_from=60, offset=offset)
    summary = run_following(robot)
    assert summary.faults[0].cycle == 59
    reason = summary.faults[0].reason
    assert reason.startswith("tracking: measured iiwa_joint_1") and "1.0000 rad from" in reason
    held = [s.joint_positions for s in robot.sent[59:]]
    assert all(np.array_equal(h, held[0]) for h in held)


def test_an_arm_that_does_not_follow_latches_before_the_error_builds_up() -> None:
    # States stay at the start while the policy commands a target 0.5 rad away (in
    # joint_delta mode the target moves with the measured arm and stays within the scale).
    raw = support.make_contract()
    raw["action"].update(mode="joint_offset", scale=0.5)
    script = [scripted.state(s) for s in range(1, 400)]
    backend = scripted.ScriptedRobot(script)
    loop = ControlLoop(
        scripted.ScriptedPolicy([np.full(7, 1.0)]),
        scripted.parse_contract(raw),
        ROBOT.replace(stale_timeout_s=0.01),
        backend,
        scripted.GOAL,
        8,
    )
    summary = loop.run(first_state_timeout_s=1.0)
    assert summary.faults and summary.faults[0].reason.startswith("tracking")
    sent = np.array([s.joint_positions for s in backend.sent])
    step = ROBOT.interpolator_velocity * PERIOD
    assert np.all(np.abs(sent - START) <= ROBOT.tracking_error_rad + step + 1e-12)


def test_the_tracking_limit_is_configurable_per_joint(tmp_path: Path) -> None:
    from iiwa_deploy.config import ConfigError, load_robot_config

    text = (support.DEPLOY_DIR / "robot_iiwa14.yaml").read_text()
    per_joint = tmp_path / "robot.yaml"
    per_joint.write_text(
        text.replace(
            "safety:\n", "safety:\n  tracking_error_rad: [0.2, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1]\n"
        )
    )
    assert load_robot_config(per_joint).tracking_error_rad.tolist()[0] == 0.2
    per_joint.write_text(text.replace("safety:\n", "safety:\n  tracking_error_rad: -1\n"))
    with pytest.raises(ConfigError, match="tracking_error_rad"):
        load_robot_config(per_joint)


# 3 --------------------------------------------------------------- NaN/inf states
def test_decoder_delivers_well_formed_non_finite_states_only_when_asked() -> None:
    positions = START.copy()
    positions[2] = math.inf
    datagram = encode_state(4, 1.0, positions, np.zeros(7), check_finite=False)
    with pytest.raises(ProtocolError, match="non-finite"):
        decode_state(datagram)
    assert math.isinf(decode_state(datagram, allow_non_finite=True).joint_positions[2])
    with pytest.raises(ProtocolError):
        decode_state(datagram[:-8], allow_non_finite=True)  # garbage stays garbage


def test_a_nan_state_over_udp_latches_the_state_gate(hold_model) -> None:
    faults = FaultInjection(nan_at_cycles=(120,))
    summary, _ = run_udp(hold_model, PERIOD, faults, duration_s=1.0)
    assert summary.fault_latched, summary.format()
    assert summary.faults[0].reason == "state contains a non-finite joint position or velocity"
    assert summary.link["malformed"] == 0


# 4 ------------------------------------------------------------- bad first state
def test_a_bad_first_state_leaves_the_loop_silent_even_when_good_states_follow() -> None:
    nan = START.copy()
    nan[0] = math.nan
    script = [scripted.state(1, nan)] + [scripted.state(s) for s in range(2, 50)]
    summary, backend, _ = scripted.run_script(script, [np.zeros(7)])
    assert backend.sent == []
    assert summary.unanswered_states == 49 and summary.fault_latched


# 5 ---------------------------------------------------------------- STATE flags
def test_robot_error_flag_latches() -> None:
    script = [scripted.state(s) for s in range(1, 40)]
    script[20] = RobotState(21, 21 * PERIOD, START.copy(), np.zeros(7), robot_error=True)
    summary, backend, _ = scripted.run_script(script, [np.full(7, 0.3)])
    assert summary.faults[0].reason.startswith("the robot reports an error")
    assert all(s.fault for s in backend.sent[20:])


def test_while_not_commanding_the_answer_is_the_measured_position_and_nothing_advances() -> None:
    jogged = [START + 0.002 * k for k in range(40)]
    script = [scripted.state(s) for s in range(1, 41)]
    script += [
        RobotState(41 + k, (41 + k) * PERIOD, jogged[k], np.zeros(7), commanding=False)
        for k in range(40)
    ]
    script += [RobotState(81 + k, (81 + k) * PERIOD, jogged[-1], np.zeros(7)) for k in range(20)]
    policy = scripted.ScriptedPolicy([np.full(7, 0.5)])
    backend = scripted.ScriptedRobot(script)
    loop = ControlLoop(policy, scripted.CONTRACT, scripted.ROBOT, backend, scripted.GOAL, 10)
    calls_before_pause = []
    backend.on_receive[41] = lambda: calls_before_pause.append(policy.calls)
    backend.on_receive[81] = lambda: calls_before_pause.append(policy.calls)
    summary = loop.run(first_state_timeout_s=1.0)
    assert not summary.faults, summary.format()
    for k in range(40):
        np.testing.assert_array_equal(backend.sent[40 + k].joint_positions, jogged[k])
    assert calls_before_pause[0] == calls_before_pause[1]  # no policy step while paused
    # Back to commanding: the stream starts at rest from where the arm was left.
    resumed = backend.sent[80].joint_positions
    assert np.all(np.abs(resumed - jogged[-1]) <= ROBOT.acceleration * PERIOD**2 + 1e-12)


def test_udp_backend_reads_the_state_flags() -> None:
    with (
        UdpRobot(("127.0.0.1", 0), PERIOD) as backend,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as robot_side,
    ):
        robot_side.sendto(encode_state(1, 0.0, START, np.zeros(7), flags=0), backend.local_address)
        state = backend.receive_state(1.0)
        assert state is not None and not state.commanding and not state.robot_error
        robot_side.sendto(
            encode_state(2, 0.0, START, np.zeros(7), flags=STATE_COMMANDING_ACTIVE | 1 << 2),
            backend.local_address,
        )
        state = backend.receive_state(1.0)
        assert state is not None and state.commanding and state.robot_error


# 6 ------------------------------------------------------------- model integrity
def test_64_flipped_bytes_in_the_middle_of_the_model_are_refused(tmp_path, capsys) -> None:
    corrupted = tmp_path / "policy.onnx"
    data = bytearray(REACH.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    corrupted.write_bytes(bytes(data))
    assert deploy_cli.main(["check", "--model", str(corrupted)]) == EXIT_REFUSED
    assert "changed since export" in capsys.readouterr().err
    run = ["run", "--model", str(corrupted), "--robot", "fake", "--bind", "127.0.0.1:0"]
    assert deploy_cli.main([*run, "--duration", "1"]) == EXIT_REFUSED
    assert "changed since export" in capsys.readouterr().err
    assert deploy_cli.main(["check", "--model", str(REACH)]) == 0


def test_the_hash_ignores_the_metadata_and_a_model_without_one_is_refused(tmp_path) -> None:
    import onnx

    model = onnx.load(str(REACH))
    before = model_sha256(model.SerializeToString())
    assert before == file_sha256(REACH)
    model.metadata_props.add(key="note", value="more metadata")
    assert model_sha256(model.SerializeToString()) == before
    model.graph.initializer[0].raw_data = bytes(len(model.graph.initializer[0].raw_data))
    assert model_sha256(model.SerializeToString()) != before
    unhashed = support.make_contract(model_sha256="")
    path = support.write_policy(tmp_path, unhashed)
    with pytest.raises(ValueError, match="no model_sha256"):
        deploy_cli.prepare_policy(path)


# 7 ------------------------------------------------------------------ command line
def _exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exited:  # argparse refuses with exit 2
        return exited.code


def test_every_bad_command_line_input_is_a_message_and_exit_2(tmp_path, capsys) -> None:
    from iiwa_rl.cli import main as iiwa_rl_main

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("safety: 5\n")
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("{{{ not yaml")
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    busy_address = f"127.0.0.1:{busy.getsockname()[1]}"
    reach = str(REACH)
    controller = [
        ["run", "--model", reach, "--bind", busy_address],
        ["run", "--model", reach, "--bind", "no-such-host.invalid:30200"],
        ["run", "--model", reach, "--robot-config", str(tmp_path / "missing.yaml")],
        ["run", "--model", reach, "--robot-config", str(bad_yaml)],
        ["run", "--model", reach, "--duration", "-1"],
        ["run", "--model", reach, "--max-cycles", "-5"],
        ["run", "--model", reach, "--goal", "nan", "0", "0.5"],
        ["check", "--model", reach, "--robot-config", str(broken_yaml)],
        ["fake-robot", "--port", "99999"],
        ["fake-robot", "--period", "-1"],
        ["ros2", "--model", reach, "--update-rate", "0"],
    ]
    training_side = [
        ["deploy", reach, "--period", "0"],
        ["deploy", reach, "--goal", "nan", "0", "0.5"],
        ["deploy", reach, "--robot", "udp", "--bind", "garbage"],
        ["deploy", reach, "--robot", "udp", "--bind", busy_address],
        ["deploy", reach, "--robot-config", str(bad_yaml)],
        ["deploy", reach, "--robot-config", str(tmp_path / "missing.yaml")],
        ["deploy", reach, "--duration", "-1"],
        ["deploy", reach, "--max-cycles", "-5"],
        ["fake-robot", "--controller", "garbage"],
        ["fake-robot", "--period", "-1"],
    ]
    try:
        for argv in controller:
            assert _exit_code(deploy_cli.main, argv) == 2, argv
            captured = capsys.readouterr()
            assert "Traceback" not in captured.err + captured.out, argv
            assert captured.err.strip() or captured.out.strip(), argv
        for argv in training_side:
            assert _exit_code(iiwa_rl_main, argv) == 2, argv
            captured = capsys.readouterr()
            assert "Traceback" not in captured.err + captured.out, argv
            assert captured.err.strip() or captured.out.strip(), argv
    finally:
        busy.close()


# 8 ------------------------------------------------------------- readable numbers
def test_fault_messages_stay_readable_for_huge_values() -> None:
    monitor = SafetyMonitor(ROBOT)
    huge = START.copy()
    huge[3] = 1e200
    assert not monitor.check_state(huge, np.zeros(7))
    reason = monitor.faults[0].reason
    assert "1e+200" in reason and len(reason) < 200, reason
    assert readable(0.12345) == "0.1235" and readable(-3e9) == "-3e+09"
    assert readable(math.nan) == "nan"


def test_an_arm_that_stops_following_a_joint_delta_policy_latches_on_the_lasting_error() -> None:
    # In joint_delta mode the target moves with the measured arm: the error stays about one
    # action scale (0.08 rad), under the instant limit, as long as the policy pushes.
    script = [scripted.state(s) for s in range(1, 200)]
    backend = scripted.ScriptedRobot(script)
    loop = ControlLoop(
        scripted.ScriptedPolicy([np.full(7, 1.0)]),
        scripted.CONTRACT,
        ROBOT.replace(stale_timeout_s=0.01),
        backend,
        scripted.GOAL,
        8,
    )
    started = time.perf_counter()
    for call in range(2, len(script) + 2):
        backend.on_receive[call] = lambda: time.sleep(PERIOD)  # states at the robot's pace
    summary = loop.run(first_state_timeout_s=1.0)
    assert summary.faults, summary.format()
    reason = summary.faults[0].reason
    assert reason.startswith("tracking") and "has stayed more than 0.0500 rad" in reason
    assert time.perf_counter() - started < 1.5
