"""`iiwa-rl view`: watch a policy in the PyBullet GUI, in real time.

    iiwa-rl view [CONFIG | RUN_DIR | policy.onnx] [--episodes N] [--seconds S]
                 [--screenshot PATH] [--policy auto|zero|random|scripted]

Keys (in the GUI window): r resets the episode, space pauses and resumes, q quits.
Closing the window quits too. Each control step is followed by a sleep to the
environment's control period, so the arm moves at its real speed; when the machine
cannot keep up, the viewer runs as fast as it can rather than piling up delay.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pybullet

from iiwa_rl.viz.overlay import (
    GUI_FLOOR_GRID_RGB,
    Camera,
    EpisodeStatus,
    GuiOverlay,
    draw_overlay,
    floor_grid,
    status_from_info,
)

KEY_RESET, KEY_PAUSE, KEY_QUIT = ord("r"), ord(" "), ord("q")
END_OF_EPISODE_HOLD_S = 1.0  # the last frame stays up this long, so a result can be read
PAUSED_POLL_S = 0.03
RECORDING_FOV_DEG = 50.0  # overlay.workspace_camera's default
SLOW_FRAME_S = 0.03  # two debug calls slower than this: software OpenGL, shadows off


class Viewer:
    """Runs a `LoadedPolicy` in a GUI environment until it is told to stop."""

    def __init__(self, loaded, seed: int = 0, realtime: bool = True, shadows: str = "auto"):
        from iiwa_rl.rollout import Rollout
        from iiwa_rl.viz.policies import make_env

        self.loaded = loaded
        self.seed = seed
        self.realtime = realtime
        self.env = make_env(loaded.env_id, loaded.env_kwargs, render_mode="human")
        self.base = self.env.unwrapped
        self.client = self.base.sim.client
        self.actor = loaded.bind(self.env)
        # Driven by hand, a step per tick: the keys can reset an episode between any two.
        self.rollout = Rollout(self.env, self.actor.act_one, seed, policy_reset=self.actor.reset)
        self.period = 1.0 / float(self.base.config.control_hz)
        self._frame_workspace()
        self.shadows = shadows == "on" or (shadows == "auto" and not self._slow_gui())
        self.client.configureDebugVisualizer(pybullet.COV_ENABLE_SHADOWS, int(self.shadows))
        self.overlay = GuiOverlay(self.env)
        self.episode = 0
        self.paused = False
        self._held: set[int] = set()  # keys whose press was seen and release not yet
        self.steps = 0
        self.results: list[bool] = []

    def _frame_workspace(self) -> None:
        """Point the GUI camera at the env's workspace framing (`camera_target()`), with
        the distance scaled so the workspace fills the window as it fills a recorded frame:
        the GUI's field of view is wider than the recordings' 50 degrees."""
        target, distance, yaw, pitch = self.base.camera_target()
        projection = np.asarray(self.client.getDebugVisualizerCamera()[3]).reshape(4, 4).T
        gui_half_tan = 1.0 / projection[1, 1] if projection[1, 1] > 0 else None
        if gui_half_tan:
            # The margin: at the GUI's wide angle (90 degrees vertical), what stands nearer
            # the camera than the target looks bigger than in a recording.
            distance *= 1.3 * np.tan(np.radians(RECORDING_FOV_DEG / 2)) / gui_half_tan
        self.client.resetDebugVisualizerCamera(float(distance), yaw, pitch, target)

    def _slow_gui(self) -> bool:
        """Whether the GUI renders in software (Xvfb, no GPU): a debug-item call waits for
        a frame, and a shadowed frame then takes ~0.1 s, too slow for 25 Hz control."""
        delays = []
        for _ in range(3):
            started = time.monotonic()
            item = self.client.addUserDebugText("", [0.0, 0.0, 0.0])
            self.client.removeUserDebugItem(item)
            delays.append(time.monotonic() - started)
        return sorted(delays)[1] > SLOW_FRAME_S

    # ------------------------------------------------------------------- loop
    def run(self, episodes: int | None = None, seconds: float | None = None) -> dict:
        """Play until `episodes` episodes ended, `seconds` passed, q, or the window closed."""
        started = time.monotonic()

        def out_of_time() -> bool:
            return seconds is not None and time.monotonic() - started >= seconds

        reason = "episodes done"
        self._reset()
        next_tick = time.monotonic()
        while True:
            if out_of_time():
                reason = "time limit"
                break
            keys = self._keys()
            if keys is None:
                reason = "window closed"
                break
            if KEY_QUIT in keys:
                reason = "q pressed"
                break
            if KEY_PAUSE in keys:
                self.paused = not self.paused
                self.status.paused = self.paused
                self.overlay.update(self.status, force_text=True)
            if KEY_RESET in keys:
                self._reset()
                next_tick = time.monotonic()
                continue
            if self.paused:
                time.sleep(PAUSED_POLL_S)
                next_tick = time.monotonic()
                continue

            step = self.rollout.step()
            self.steps += 1
            status = self.status
            status.step = step.step
            status.reward = step.reward
            status.episode_return = step.episode_return
            status.done = step.done
            status_from_info(self.env, step.info, status)
            self.overlay.update(status)
            next_tick = self._sleep_until(next_tick + self.period)

            if status.done:
                self.results.append(status.success)
                if episodes is not None and len(self.results) >= episodes:
                    break
                self._hold(END_OF_EPISODE_HOLD_S, out_of_time)
                self._reset()
                next_tick = time.monotonic()
        return {
            "reason": reason,
            "steps": self.steps,
            "episodes_started": self.episode,
            "episodes_finished": len(self.results),
            "successes": int(sum(self.results)),
            "seconds": time.monotonic() - started,
        }

    def _reset(self) -> None:
        """The next episode (seeded seed + its index), its text block up."""
        self.rollout.reset()
        self.episode = self.rollout.episode + 1  # episodes started
        self.overlay.reset()
        self.status = status_from_info(
            self.env,
            self.rollout.reset_info,
            EpisodeStatus(
                episode=self.episode,
                episode_return=0.0,
                policy=self.loaded.label,
                paused=self.paused,
            ),
        )
        self.overlay.update(self.status, force_text=True)

    def _keys(self) -> set[int] | None:
        """Keys pressed since the last call; None once the GUI window is gone."""
        try:
            if not self.client.isConnected():
                return None
            events = self.client.getKeyboardEvents()
        except pybullet.error:
            return None
        # A quick press can reach us as its release alone (the GUI thread overwrote the
        # triggered state before we read it): count such a release as a press, unless its
        # press was already seen, so a slow press is not counted twice.
        pressed = set()
        for key, state in events.items():
            if state & pybullet.KEY_WAS_TRIGGERED:
                pressed.add(key)
                if not state & pybullet.KEY_WAS_RELEASED:
                    self._held.add(key)
            elif state & pybullet.KEY_WAS_RELEASED:
                if key in self._held:
                    self._held.discard(key)
                else:
                    pressed.add(key)
        return pressed

    def _sleep_until(self, tick: float) -> float:
        if not self.realtime:
            return time.monotonic()
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
            return tick
        return time.monotonic()  # behind: do not try to catch up with a burst of steps

    def _hold(self, seconds: float, out_of_time) -> None:
        """Keep the finished episode on screen, still answering the keys."""
        until = time.monotonic() + (seconds if self.realtime else 0.0)
        while time.monotonic() < until and not out_of_time():
            keys = self._keys()
            if keys is None or keys & {KEY_QUIT, KEY_RESET}:
                return
            time.sleep(PAUSED_POLL_S)

    # ------------------------------------------------------------- screenshot
    def screenshot(self, path: str | Path) -> Path:
        """Save the GUI's current view (OpenGL, as the window shows it) with the overlays.

        getCameraImage does not draw debug lines and text, so the floor grid, the trail and
        the text block are drawn onto the image the same way recordings get them."""
        from PIL import Image

        camera_info = self.client.getDebugVisualizerCamera()
        width, height, view, projection = camera_info[:4]
        _, _, rgba, _, segmentation = self.client.getCameraImage(
            width, height, view, projection, renderer=pybullet.ER_BULLET_HARDWARE_OPENGL
        )
        frame = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3]
        camera = Camera(width, height, list(view), list(projection))
        background = np.asarray(segmentation).reshape(height, width) < 0
        frame = floor_grid(frame, background, camera, GUI_FLOOR_GRID_RGB)
        frame = draw_overlay(frame, self.env, camera, self.status)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path, optimize=True)
        return path

    def close(self) -> None:
        self.env.close()


def cmd_view(args: argparse.Namespace) -> int:
    from iiwa_rl.schema import ConfigError
    from iiwa_rl.viz.policies import load_policy

    if args.episodes is not None and args.episodes < 1:
        raise ConfigError("--episodes must be at least 1")
    if args.seconds is not None and args.seconds <= 0:
        raise ConfigError("--seconds must be positive")
    loaded = load_policy(args.source, args.policy, args.checkpoint, args.seed)
    viewer = Viewer(loaded, seed=args.seed, realtime=not args.fast, shadows=args.shadows)
    print(
        f"viewing {loaded.env_id} with {loaded.label} (shadows {'on' if viewer.shadows else 'off'}):"
        " r reset, space pause, q quit",
        flush=True,
    )
    try:
        summary = viewer.run(episodes=args.episodes, seconds=args.seconds)
        if args.screenshot and summary["reason"] != "window closed":
            print(f"screenshot: {viewer.screenshot(args.screenshot)}")
    finally:
        viewer.close()
    print(
        f"stopped ({summary['reason']}) after {summary['steps']} steps in "
        f"{summary['episodes_started']} episode(s): "
        f"{summary['successes']}/{summary['episodes_finished']} finished episodes successful"
    )
    return 0


def register_cli(subparsers) -> None:
    from iiwa_rl.viz.record import add_source_arguments

    view = subparsers.add_parser(
        "view", help="watch a policy in the PyBullet GUI (keys: r reset, space pause, q quit)"
    )
    add_source_arguments(view)
    view.add_argument("--episodes", type=int, help="stop after N episodes (default: run until q)")
    view.add_argument("--seconds", type=float, help="stop after S seconds")
    view.add_argument("--screenshot", metavar="PATH", help="save a PNG of the view at the end")
    view.add_argument("--fast", action="store_true", help="do not slow down to real time")
    view.add_argument(
        "--shadows",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: off where the GUI renders in software (e.g. under Xvfb), where they are slow",
    )
    view.set_defaults(handler=cmd_view)
