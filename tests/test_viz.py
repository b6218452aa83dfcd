"""Viewer (under Xvfb), recordings, policy loading and learning-curve plots."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from iiwa_rl.viz.plots import group_runs, plot_runs
from iiwa_rl.viz.policies import (
    CONTRACT_METADATA_KEY,
    PolicyLoadError,
    load_policy,
    make_env,
)

ROOT = Path(__file__).resolve().parents[1]
REACH_CONFIG = ROOT / "configs" / "reach_ppo.yaml"
REACH_OBSERVATION_SIZE = 30


# ----------------------------------------------------------------------- Xvfb
def _start_xvfb() -> tuple[subprocess.Popen, str]:
    """Xvfb on the first free display number from 90; skips the test where it cannot."""
    binary = shutil.which("Xvfb")
    if binary is None:
        pytest.skip("Xvfb not found (apt-get install xvfb): the GUI viewer needs an X display")
    for number in range(90, 110):
        if Path(f"/tmp/.X{number}-lock").exists() or Path(f"/tmp/.X11-unix/X{number}").exists():
            continue
        process = subprocess.Popen(
            [binary, f":{number}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and process.poll() is None:
            if Path(f"/tmp/.X11-unix/X{number}").exists():
                return process, f":{number}"
            time.sleep(0.05)
        process.kill()
        process.wait()
    pytest.skip("Xvfb did not start on any display from :90 to :109")


@pytest.fixture(scope="module")
def display():
    process, name = _start_xvfb()
    yield name
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _view_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "iiwa_rl.cli", "view", *args]


def _environment(display: str) -> dict[str, str]:
    return {**os.environ, "DISPLAY": display, "OMP_NUM_THREADS": "1"}


def _summary(output: str) -> re.Match:
    match = re.search(r"stopped \((.+?)\) after (\d+) steps in (\d+) episode", output)
    assert match, f"no summary line in the viewer's output:\n{output[-3000:]}"
    return match


@pytest.mark.display
def test_viewer_runs_steps_and_screenshot_shows_robot(display, tmp_path):
    screenshot = tmp_path / "out.png"
    result = subprocess.run(
        _view_command(str(REACH_CONFIG), "--seconds", "3", "--screenshot", str(screenshot)),
        env=_environment(display),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    summary = _summary(output)
    assert summary.group(1) == "time limit"
    assert int(summary.group(2)) >= 1, "the viewer took no control step in 3 s"

    image = np.asarray(Image.open(screenshot).convert("RGB"))
    assert image.shape[0] >= 240 and image.shape[1] >= 320
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 500, f"only {len(colours)} colours: a blank or flat frame"
    red, green, blue = (image[..., i].astype(int) for i in range(3))
    # The arm's orange in any shade (lit or in shadow): red well above green, little blue.
    # The lavender background, grey links, green goal and blue trail all fail it. Its lit
    # highlights alone (red > 170) swing from about 1,100 to 2,600 pixels with the pose
    # the random policy ends in; the whole orange is about 10,000 in every pose.
    orange = (red > 120) & (red - green > 60) & (blue < 80)
    assert orange.sum() > 5000, f"{orange.sum()} orange pixels: the robot is not in the picture"


@pytest.mark.display
def test_viewer_keys_reset_and_quit(display, tmp_path):
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool not found (apt-get install xdotool): cannot press keys in the GUI")
    environment = _environment(display)
    process = subprocess.Popen(
        _view_command(str(REACH_CONFIG), "--seconds", "90"),
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        # The viewer prints its key help once the window is up and the episode started.
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("viewing "):
                break
        assert any(line.startswith("viewing ") for line in lines), "".join(lines)[-3000:]

        def press(key: str) -> None:
            subprocess.run(
                [
                    "xdotool",
                    "search",
                    "--name",
                    "Bullet Physics",
                    "windowfocus",
                    "--sync",
                    "key",
                    key,
                ],
                env=environment,
                check=True,
                timeout=30,
            )

        time.sleep(1.0)
        press("r")
        time.sleep(2.0)  # the viewer polls keys between control steps
        press("q")
        output = "".join(lines) + process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    summary = _summary(output)
    assert summary.group(1) == "q pressed", output[-3000:]
    assert int(summary.group(3)) >= 2, "r did not start a new episode"


# ------------------------------------------------------------------ recording
def test_recorded_mp4_has_one_frame_per_step_and_moves(tmp_path):
    import imageio.v2 as imageio

    from iiwa_rl.viz.overlay import TRAIL_COLOR
    from iiwa_rl.viz.record import record_episodes

    loaded = load_policy(REACH_CONFIG, "random", seed=3)
    output = tmp_path / "rollout.mp4"
    summary = record_episodes(loaded, output, episodes=2, seed=5, episode_steps=12)
    assert summary["frames"] == 2 * 12 and summary["lengths"] == [12, 12]

    reader = imageio.get_reader(str(output))
    try:
        assert reader.count_frames() == 2 * 12
        frames = [reader.get_data(i) for i in range(2 * 12)]
    finally:
        reader.close()
    assert frames[0].shape == (480, 640, 3)
    changes = [np.abs(b.astype(int) - a.astype(int)).mean() for a, b in zip(frames, frames[1:])]
    assert sum(change > 0.05 for change in changes) >= 15, f"frames barely change: {changes}"
    # The TCP trail is drawn in: its blue is in the last frame of an episode.
    target = np.array([round(255 * c) for c in TRAIL_COLOR])
    near = np.abs(frames[11].astype(int) - target).max(axis=-1) < 40
    assert near.sum() > 20, "no TCP trail in the frame"


def test_gif_and_eval_hook_recorder_count_episodes(tmp_path):
    from iiwa_rl.evaluation import run_episodes
    from iiwa_rl.viz.record import VideoRecorder

    env = make_env("IiwaReach-v0", {"episode_steps": 4}, render_mode="rgb_array")
    path = tmp_path / "eval.gif"
    recorder = VideoRecorder(path, fps=20, size=(160, 120))
    try:
        rng = np.random.default_rng(0)

        # eval's hook passes the environment only; the recorder counts episodes itself.
        def act(observations):
            return rng.uniform(-1, 1, (len(observations), 7)).astype(np.float32)

        run_episodes(act, env, episodes=3, seed=0, on_step=recorder.capture)
        assert recorder._episode == 3
    finally:
        recorder.close()
        env.close()
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.size == (160, 120)
        assert gif.n_frames == 3 * 4


def test_recorder_refuses_unknown_format(tmp_path):
    from iiwa_rl.viz.record import VideoRecorder

    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        VideoRecorder(tmp_path / "rollout.avi")


# ------------------------------------------------------------------- policies
def _tiny_onnx(path: Path, observation_size: int, action_size: int, contract: dict | None) -> tuple:
    """A linear-tanh policy written with onnx.helper; returns its weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weights = rng.normal(0, 0.3, (observation_size, action_size)).astype(np.float32)
    bias = rng.normal(0, 0.1, action_size).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["observation", "W"], ["linear"]),
            helper.make_node("Add", ["linear", "b"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["action"]),
        ],
        "tiny_policy",
        [
            helper.make_tensor_value_info(
                "observation", TensorProto.FLOAT, ["batch", observation_size]
            )
        ],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", action_size])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    if contract is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = CONTRACT_METADATA_KEY, json.dumps(contract)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return weights, bias


def _contract(**env_kwargs) -> dict:
    return {
        "format_version": 1,
        "env_id": "IiwaReach-v0",
        "env_kwargs": env_kwargs,
        "observation": {"size": REACH_OBSERVATION_SIZE},
        "action": {"size": 7},
    }


def test_onnx_policy_loads_env_from_contract_and_acts(tmp_path):
    path = tmp_path / "policy.onnx"
    weights, bias = _tiny_onnx(
        path, REACH_OBSERVATION_SIZE, 7, _contract(episode_steps=5, action_scale=0.05)
    )
    loaded = load_policy(path)
    assert loaded.kind == "onnx"
    assert (loaded.env_id, loaded.env_kwargs) == (
        "IiwaReach-v0",
        {"episode_steps": 5, "action_scale": 0.05},
    )

    env = make_env(loaded.env_id, loaded.env_kwargs)
    try:
        actor = loaded.bind(env)
        assert env.unwrapped.config.action_scale == 0.05
        observation, _ = env.reset(seed=0)
        batch = np.stack([observation, observation * 0.5])
        np.testing.assert_allclose(actor(batch), np.tanh(batch @ weights + bias), atol=1e-5)
        # The contract's episode length holds even though gym.make takes that keyword
        # for itself: the env is built with it in its config.
        steps = 0
        while True:
            steps += 1
            observation, _, terminated, truncated, _ = env.step(actor(observation[None])[0])
            if terminated or truncated:
                break
        assert steps == 5
    finally:
        env.close()


def test_onnx_contract_from_sidecar_and_refusals(tmp_path):
    # No metadata: the sidecar policy.json is read; a folder stands for its policy.onnx.
    _tiny_onnx(tmp_path / "policy.onnx", REACH_OBSERVATION_SIZE, 7, contract=None)
    (tmp_path / "policy.json").write_text(json.dumps(_contract(control_hz=20.0)))
    assert load_policy(tmp_path).env_kwargs == {"control_hz": 20.0}

    (tmp_path / "policy.json").unlink()
    with pytest.raises(PolicyLoadError, match="no contract"):
        load_policy(tmp_path / "policy.onnx")

    # A model whose input does not fit the environment is refused when bound.
    wrong = tmp_path / "wrong" / "policy.onnx"
    wrong.parent.mkdir()
    _tiny_onnx(wrong, REACH_OBSERVATION_SIZE + 1, 7, _contract())
    loaded = load_policy(wrong)
    env = make_env(loaded.env_id, loaded.env_kwargs)
    try:
        with pytest.raises(
            PolicyLoadError, match="takes 31 observations, the environment gives 30"
        ):
            loaded.bind(env)
    finally:
        env.close()

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(PolicyLoadError, match="not a readable ONNX model"):
        load_policy(broken)


def test_config_source_gives_stand_in_policies():
    random_policy = load_policy(REACH_CONFIG)
    assert random_policy.kind == "random" and random_policy.env_id == "IiwaReach-v0"
    with pytest.raises(PolicyLoadError, match="cartesian action mode only"):
        load_policy(REACH_CONFIG, "scripted")
    zero = load_policy(REACH_CONFIG, "zero")
    env = make_env(zero.env_id, zero.env_kwargs)
    try:
        actor = zero.bind(env)
        observation, _ = env.reset(seed=0)
        assert not actor(observation[None]).any()
        random_actor = random_policy.bind(env)
        actions = random_actor(np.stack([observation] * 50))
        assert actions.shape == (50, 7) and actions.min() >= -1 and actions.max() <= 1
        assert actions.std() > 0.3
    finally:
        env.close()


# ---------------------------------------------------------------------- plots
def _fake_run(run_dir: Path, seed: int, learning_rate: float, evals: int = 6) -> Path:
    run_dir.mkdir(parents=True)
    config = {
        "algorithm": "ppo",
        "seed": seed,
        "env": {"id": "IiwaReach-v0", "num_envs": 4},
        "ppo": {"learning_rate": learning_rate},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(seed)
    rows = ["step,wall_time,episodes,success_rate,mean_return,mean_length,final_tcp_distance"]
    for i in range(1, evals + 1):
        rows.append(
            f"{i * 1000},{i * 2.0},20,{min(1.0, i / evals):.3f},{i + rng.normal():.3f},60,{0.2 / i:.4f}"
        )
    (run_dir / "eval.csv").write_text("\n".join(rows) + "\n")
    rows = ["step,wall_time,steps_per_second,episode_return,success_rate,policy_loss,value_loss"]
    for i in range(1, 60):
        # An empty cell (no finished episode yet) must not break the curve.
        success = "" if i < 3 else f"{min(1.0, i / 60):.3f}"
        rows.append(
            f"{i * 100},{i * 0.2},500,{i * 0.1 + rng.normal():.3f},{success},-0.01,{1.0 / i:.4f}"
        )
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    return run_dir


def _assert_png(path: Path, min_size: tuple[int, int]) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "an empty figure"


def test_plot_one_run_from_the_cli(tmp_path):
    import matplotlib.image

    from iiwa_rl.cli import main

    run = _fake_run(tmp_path / "run", seed=0, learning_rate=3e-4)
    output = tmp_path / "curves.png"
    assert main(["plot", str(run), "-o", str(output), "--x", "wall_time"]) == 0
    _assert_png(output, (800, 500))
    assert matplotlib.image.imread(output).ndim == 3
    # Against steps and wall-clock in one figure: twice the rows, so a taller image.
    both = tmp_path / "both.png"
    assert main(["plot", str(run), "-o", str(both), "--x", "both"]) == 0
    assert matplotlib.image.imread(both).shape[0] > 1.7 * matplotlib.image.imread(output).shape[0]


def test_plot_groups_seeds_and_labels_differing_configs(tmp_path):
    runs = [
        _fake_run(tmp_path / "a0", seed=0, learning_rate=3e-4),
        _fake_run(tmp_path / "a1", seed=1, learning_rate=3e-4),
        _fake_run(tmp_path / "b0", seed=0, learning_rate=1e-3, evals=4),
    ]
    groups = group_runs(runs)
    assert sorted(len(dirs) for dirs in groups.values()) == [1, 2]
    labels = sorted(groups)
    assert labels == [
        "ppo on IiwaReach-v0 (ppo.learning_rate=0.0003)",
        "ppo on IiwaReach-v0 (ppo.learning_rate=0.001)",
    ]
    _assert_png(plot_runs(runs, tmp_path / "compare.png"), (800, 500))

    # Eval rows only (a run interrupted before its first training log) still plot.
    (runs[2] / "metrics.csv").unlink()
    _assert_png(plot_runs([runs[2]], tmp_path / "eval_only.png"), (800, 250))


def test_plot_refuses_runs_without_logs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no metrics.csv or eval.csv"):
        plot_runs([tmp_path / "empty"], tmp_path / "x.png")
    header_only = tmp_path / "header_only"
    header_only.mkdir()
    (header_only / "eval.csv").write_text("step,wall_time,success_rate,mean_return\n")
    with pytest.raises(ValueError, match="no rows to plot"):
        plot_runs([header_only], tmp_path / "x.png")


def test_record_cli_writes_gif(tmp_path):
    from iiwa_rl.cli import main

    output = tmp_path / "rollout.gif"
    arguments = ["record", str(REACH_CONFIG), "-o", str(output), "--policy", "zero"]
    assert main([*arguments, "--episodes", "2", "--episode-steps", "3", "--size", "160x120"]) == 0
    with Image.open(output) as gif:
        assert gif.size == (160, 120) and gif.n_frames == 2 * 3
    assert (
        main(["record", str(REACH_CONFIG), "-o", str(tmp_path / "x.gif"), "--policy", "scripted"])
        == 2
    )
