"""Off-screen recordings: `iiwa-rl record` and the recorder behind `iiwa-rl eval --video`.

    iiwa-rl record [CONFIG | RUN_DIR | policy.onnx] -o rollout.mp4 --episodes 3 --seed 0

Frames are rendered with PyBullet's software renderer (no display, no GPU), one per
control step, with the overlays of `overlay.py` drawn on. MP4 goes through imageio's
ffmpeg (the binary bundled with imageio-ffmpeg); GIF through Pillow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from iiwa_rl.schema import ConfigError
from iiwa_rl.viz.overlay import (
    EpisodeStatus,
    draw_overlay,
    info_from_env,
    render_frame,
    status_from_info,
    workspace_camera,
)

VIDEO_SUFFIXES = (".mp4", ".gif")
DEFAULT_SIZES = {".mp4": (640, 480), ".gif": (480, 360)}  # a GIF is kept in memory until close


class VideoRecorder:
    """Writes one frame per `capture(env)` to `path` (.mp4 or .gif) at `fps`.

    `capture(env, status)` draws the given text block; without one (eval's per-step hook
    passes the environment only) the recorder reads the step, distance and success back
    from the environment and counts episodes itself."""

    def __init__(self, path: str | Path, fps: float = 20.0, size: tuple[int, int] | None = None):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise ConfigError(f"{self.path}: the video must end in {' or '.join(VIDEO_SUFFIXES)}")
        if fps <= 0:
            raise ConfigError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.size = size or DEFAULT_SIZES[suffix]
        self.frames = 0
        self._gif_frames: list[Image.Image] = []
        self._writer = None
        self._episode = 0
        self._last_step = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".mp4":
            import imageio.v2 as imageio

            # libx264 + yuv420p: plays in browsers and on GitHub. Sizes that are not a
            # multiple of 16 are padded by imageio (macro_block_size) rather than refused.
            self._writer = imageio.get_writer(
                str(self.path),
                format="FFMPEG",
                mode="I",
                fps=self.fps,
                codec="libx264",
                quality=7,
                macro_block_size=16,
                ffmpeg_log_level="error",
            )

    def capture(self, env, status: EpisodeStatus | None = None) -> np.ndarray:
        """Render `env` now, draw the overlays, append the frame; returns the frame."""
        if status is None:
            status = self._status_from_env(env)
        camera = workspace_camera(env, *self.size)
        frame = draw_overlay(render_frame(env, camera), env, camera, status)
        if self._writer is not None:
            self._writer.append_data(frame)
        else:
            # Palette images take a third of the memory of RGB ones until the GIF is saved.
            self._gif_frames.append(Image.fromarray(frame).quantize(256, Image.Quantize.FASTOCTREE))
        self.frames += 1
        return frame

    def _status_from_env(self, env) -> EpisodeStatus:
        # The env's step counter has no public accessor; a counter that did not grow
        # means run_episodes reset the env since the last frame.
        step = int(env.unwrapped.elapsed_steps)
        if self._last_step is None or step <= self._last_step:
            self._episode += 1
        self._last_step = step
        info = info_from_env(env)
        status = EpisodeStatus(episode=self._episode, step=step)
        return status_from_info(env, info, status)

    def close(self) -> Path:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        elif self._gif_frames:
            first, *rest = self._gif_frames
            first.save(
                self.path,
                save_all=True,
                append_images=rest,
                duration=int(round(1000.0 / self.fps)),
                loop=0,
            )
            self._gif_frames = []
        return self.path

    def __enter__(self) -> VideoRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record_episodes(
    loaded,
    output: str | Path,
    episodes: int = 1,
    seed: int = 0,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    episode_steps: int | None = None,
) -> dict:
    """Render `episodes` episodes of a `LoadedPolicy` to `output`. Returns a summary."""
    from iiwa_rl.rollout import Rollout, Step
    from iiwa_rl.viz.policies import make_env

    kwargs = dict(loaded.env_kwargs)
    if episode_steps is not None:
        kwargs["episode_steps"] = episode_steps
    env = make_env(loaded.env_id, kwargs, render_mode="rgb_array")
    try:
        actor = loaded.bind(env)
        fps = fps or float(env.unwrapped.config.control_hz)  # real time
        rollout = Rollout(env, actor.act_one, seed, policy_reset=actor.reset)
        status = EpisodeStatus()

        def capture(step: Step) -> None:
            nonlocal status
            if step.step == 1:  # a new episode: its text starts from the reset's figures
                status = EpisodeStatus(episode=step.episode + 1, policy=loaded.label)
                status_from_info(env, rollout.reset_info, status)
            status.step = step.step
            status.reward = step.reward
            status.episode_return = step.episode_return
            status.done = step.done
            status_from_info(env, step.info, status)
            recorder.capture(env, status)

        with VideoRecorder(output, fps, size) as recorder:
            finished = rollout.run(episodes, on_step=capture)
        return {
            "path": str(output),
            "frames": recorder.frames,
            "episodes": episodes,
            "successes": sum(episode.is_success for episode in finished),
            "lengths": [episode.length for episode in finished],
        }
    finally:
        env.close()


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"size {text} is too small")
    return width, height


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The policy-source arguments `view` and `record` share."""
    from iiwa_rl.viz.policies import POLICY_KINDS

    parser.add_argument(
        "source",
        nargs="?",
        help="a config .yaml, a run directory or a policy.onnx (default: the shipped reach "
        "policy if present, else configs/reach_ppo.yaml)",
    )
    parser.add_argument(
        "--policy",
        choices=POLICY_KINDS,
        default="auto",
        help="auto: the trained policy; for a config the scripted expert (grasp, cartesian) "
        "or random actions. zero|random|scripted replace the trained policy",
    )
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--seed", type=int, default=0, help="first episode's seed")


def cmd_record(args: argparse.Namespace) -> int:
    from iiwa_rl.viz.policies import load_policy

    if args.episodes < 1:
        raise ConfigError("--episodes must be at least 1")
    loaded = load_policy(args.source, args.policy, args.checkpoint, args.seed)
    print(
        f"recording {args.episodes} episode(s) of {loaded.env_id} with {loaded.label}", flush=True
    )
    summary = record_episodes(
        loaded,
        args.output,
        episodes=args.episodes,
        seed=args.seed,
        fps=args.fps,
        size=args.size,
        episode_steps=args.episode_steps,
    )
    print(
        f"wrote {summary['path']}: {summary['frames']} frames, "
        f"{summary['successes']}/{summary['episodes']} successful episodes"
    )
    return 0


def register_cli(subparsers) -> None:
    record = subparsers.add_parser(
        "record", help="render episodes off-screen to a video (.mp4 or .gif), no display needed"
    )
    add_source_arguments(record)
    record.add_argument("-o", "--output", default="rollout.mp4", help="rollout.mp4 or rollout.gif")
    record.add_argument("--episodes", type=int, default=1)
    record.add_argument("--fps", type=float, help="frames per second (default: real time)")
    record.add_argument(
        "--size", type=parse_size, help="WIDTHxHEIGHT (default 640x480, GIF 480x360)"
    )
    record.add_argument(
        "--episode-steps", type=int, help="override the environment's episode length (steps)"
    )
    record.set_defaults(handler=cmd_record)
