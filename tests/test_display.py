"""The PyBullet GUI without a display: a clear error, not the end of the process.

PyBullet ends the Python process when its GUI cannot reach an X server; gymnasium's
check_env with render checks then killed its caller. Each case runs in a subprocess, so
a regression shows as a failed test rather than a dead test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import gymnasium as gym
import iiwa_rl
from iiwa_rl.sim import DisplayUnavailableError
try:
    gym.make("IiwaReach-v0", render_mode="human")
except DisplayUnavailableError as error:
    print("REFUSED:", error)
else:
    print("OPENED")
print("ALIVE")
"""


def _run(display: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'deploy'}", OMP_NUM_THREADS="1")
    if display is not None:
        env["DISPLAY"] = display
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X displays are Linux's")
@pytest.mark.parametrize(
    "display,expected",
    [(None, "DISPLAY is not set"), (":917", "DISPLAY=:917 cannot be opened")],
    ids=["no DISPLAY", "DISPLAY without an X server"],
)
def test_human_render_mode_without_a_display_raises(display, expected):
    if display and Path(f"/tmp/.X11-unix/X{display[1:]}").exists():
        pytest.skip(f"an X server answers at {display} here")
    result = _run(display)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALIVE" in result.stdout, result.stdout + result.stderr
    assert "REFUSED:" in result.stdout and expected in result.stdout, result.stdout
    assert "render_mode='rgb_array'" in result.stdout  # says what works instead


def test_the_viewer_command_exits_2_without_a_display(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'deploy'}", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "iiwa_rl.cli", "view", str(REPO / "configs" / "reach_ppo.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "iiwa-rl view: error:" in result.stderr and "DISPLAY" in result.stderr
    assert "Traceback" not in result.stderr
