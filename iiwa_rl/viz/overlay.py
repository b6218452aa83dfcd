"""What the viewer and the recordings draw on top of the scene.

- markers: the reach goal (the environment's own green sphere, labelled here), the grasp
  cube and its lift target (a translucent sphere this module adds at the height the cube
  must reach);
- the TCP trail: the environment's `tcp_trail` as debug lines in the GUI, as a polyline
  drawn into recorded frames;
- a text block: episode, step, reward and return, the task's figures (its `metrics/`
  entries, in the lines the task writes them as: `status_lines`), success.

The GUI draws with PyBullet's debug items (addUserDebugLine / addUserDebugText); frames
for recordings get the same content drawn with Pillow, projected with the very matrices
the frame was rendered with, so markers and trail sit on the rendered robot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pybullet
from PIL import Image, ImageDraw, ImageFont

from iiwa_rl.metrics import status_lines, task_metrics

TRAIL_COLOR = (0.1, 0.45, 1.0)  # RGB in [0, 1]: blue stands out against the orange arm
GOAL_COLOR = (0.1, 0.8, 0.2)
LIFT_TARGET_RGBA = (1.0, 0.85, 0.1, 0.35)
SUCCESS_COLOR = (0.1, 0.75, 0.2)
TEXT_COLOR = (0.05, 0.05, 0.05)
FLOOR_GRID_RGB = (214, 218, 224)  # light grey on the recordings' white
GUI_FLOOR_GRID_RGB = (150, 153, 172)  # darker on the GUI's lavender background
GUI_LINE_PX = 22  # line spacing of the GUI text block, pixels
MAX_TRAIL_SEGMENTS = 150  # GUI debug lines cost a round trip each; older ones are removed


@dataclass
class EpisodeStatus:
    """The figures the text block shows for the current step."""

    episode: int = 1
    step: int = 0
    reward: float | None = None  # None where the caller does not know it (eval videos)
    episode_return: float | None = None
    success: bool = False
    done: bool = False
    task_lines: list[str] = field(default_factory=list)  # the task's figures
    policy: str = ""
    paused: bool = False

    def lines(self) -> list[str]:
        head = f"episode {self.episode}  step {self.step}"
        if self.paused:
            head += "  [paused]"
        lines = [head]
        if self.reward is not None:
            text = f"reward {self.reward:+.3f}"
            if self.episode_return is not None:
                text += f"  return {self.episode_return:+.2f}"
            lines.append(text)
        lines.extend(self.task_lines)
        lines.append(
            ("SUCCESS" if self.success else "success: no") + ("  (done)" if self.done else "")
        )
        if self.policy:
            lines.append(self.policy)
        return lines


def status_from_info(env, info: dict, status: EpisodeStatus) -> EpisodeStatus:
    """Fill the task figures of `status` from a step's (or reset's) info."""
    status.success = bool(info.get("is_success", False))
    figures = task_metrics(info)
    if figures:  # a step without them (a physics blow-up's) keeps the last ones up
        lines = getattr(env.unwrapped, "status_lines", None) or status_lines
        status.task_lines = lines(figures)
    return status


def info_from_env(env) -> dict:
    """The latest step's info, read back from the environment, for callers that only
    hold the environment (eval's per-step hook)."""
    return dict(env.unwrapped.last_info)


# --------------------------------------------------------------- scene points
def _world(env, base_frame_point) -> np.ndarray:
    return np.asarray(base_frame_point, dtype=float) + env.unwrapped.robot.base_position


def goal_point(env) -> np.ndarray | None:
    base = env.unwrapped
    goal = getattr(base, "goal_position", None)
    return None if goal is None else _world(env, goal)


def cube_point(env) -> np.ndarray | None:
    base = env.unwrapped
    cube_id = getattr(base, "cube_id", None)
    if cube_id is None:
        return None
    position, _ = base.sim.body_pose(cube_id)
    return position


def lift_target_point(env) -> np.ndarray | None:
    """Where the cube's centre must get to: above its current x, y by the lift height."""
    cube = cube_point(env)
    if cube is None:
        return None
    base = env.unwrapped
    height = base.robot.base_position[2] + base.cube_rest_height + base.config.lift_height
    return np.array([cube[0], cube[1], height])


def trail_points(env) -> list[np.ndarray]:
    return [_world(env, p) for p in env.unwrapped.tcp_trail]


# --------------------------------------------------------------------- GUI
class GuiOverlay:
    """Debug items in the PyBullet GUI of `env` (render_mode 'human').

    Each debug-item call waits for the GUI thread to take it, about one frame: ~1 ms with
    a GPU, ~35 ms under Xvfb's software OpenGL. So the text block is refreshed at most
    `text_interval` seconds apart and only the lines that changed are sent, labels only
    when their point moved; the trail gets one segment per step."""

    text_interval = 0.25  # s

    def __init__(self, env):
        self.env = env
        self.client = env.unwrapped.sim.client
        self._segments: list[int] = []
        self._trail_length = 0
        self._text_ids: list[int] = []
        self._text_lines: list[str] = []
        self._text_anchor: np.ndarray | None = None
        self._text_time = -np.inf
        self._labels: dict[str, int] = {}
        self._label_points: dict[str, np.ndarray] = {}
        self._lift_marker: int | None = None
        if getattr(env.unwrapped, "cube_id", None) is not None:
            self._lift_marker = env.unwrapped.add_visual_sphere(0.015, LIFT_TARGET_RGBA)
        # The GUI draws no floor: a grid shows where the ground is and how high things are.
        color = [c / 255 for c in GUI_FLOOR_GRID_RGB]
        for start, end in floor_grid_lines():
            self.client.addUserDebugLine(start, end, color, lineWidth=1.0)

    def reset(self) -> None:
        """A new episode: the old trail goes."""
        for item in self._segments:
            self.client.removeUserDebugItem(item)
        self._segments.clear()
        self._trail_length = 0

    def update(self, status: EpisodeStatus, force_text: bool = False) -> None:
        """Draw the current step; `force_text` refreshes the text block now (a reset, a
        pause, an episode's end: moments whose text must not lag)."""
        self._update_trail()
        self._update_markers()
        now = time.monotonic()
        if force_text or status.done or now - self._text_time >= self.text_interval:
            self._text_time = now
            self._update_text(status.lines(), status.success)

    def _update_trail(self) -> None:
        points = trail_points(self.env)
        # The env keeps its last 200 points; draw only the segments added since last time.
        new = len(points) - self._trail_length if len(points) >= self._trail_length else len(points)
        start = max(1, len(points) - new)
        for i in range(start, len(points)):
            self._segments.append(
                self.client.addUserDebugLine(points[i - 1], points[i], TRAIL_COLOR, lineWidth=3.0)
            )
        self._trail_length = len(points)
        while len(self._segments) > MAX_TRAIL_SEGMENTS:
            self.client.removeUserDebugItem(self._segments.pop(0))

    def _update_markers(self) -> None:
        lift = lift_target_point(self.env)
        if lift is not None and self._lift_marker is not None:
            self.client.resetBasePositionAndOrientation(self._lift_marker, list(lift), [0, 0, 0, 1])
        for name, point, offset in (
            ("goal", goal_point(self.env), 0.05),
            ("cube", cube_point(self.env), 0.06),
            ("lift target", lift, 0.04),
        ):
            if point is None:
                continue
            last = self._label_points.get(name)
            if last is not None and np.linalg.norm(point - last) < 0.005:
                continue
            self._label_points[name] = point
            self._labels[name] = self.client.addUserDebugText(
                name,
                list(point + np.array([0.0, 0.0, offset])),
                textColorRGB=list(TEXT_COLOR),
                textSize=1.1,
                replaceItemUniqueId=self._labels.get(name, -1),
            )

    def _update_text(self, lines: list[str], success: bool) -> None:
        # Pin the block to the upper left of the view whatever the user did with the
        # camera: place it on the plane through the camera target, facing the camera.
        camera = self.client.getDebugVisualizerCamera()
        height_px = camera[1]
        projection = np.asarray(camera[3]).reshape(4, 4).T
        horizontal, vertical = np.asarray(camera[6]), np.asarray(camera[7])
        distance, target = camera[10], np.asarray(camera[11])
        right = horizontal / (np.linalg.norm(horizontal) or 1.0)
        up = vertical / (np.linalg.norm(vertical) or 1.0)
        # Half the visible width and height (m) on that plane, from the projection.
        half_width = distance / projection[0, 0]
        half_height = distance / projection[1, 1]
        anchor = target - right * 0.94 * half_width + up * 0.90 * half_height
        spacing = 2.0 * half_height * GUI_LINE_PX / height_px
        if self._text_anchor is None or not np.allclose(anchor, self._text_anchor, atol=1e-4):
            self._text_lines = []  # the camera moved: every line goes to a new place
        self._text_anchor = anchor
        for index, line in enumerate(lines):
            if index < len(self._text_lines) and self._text_lines[index] == line:
                continue
            color = SUCCESS_COLOR if (success and line.startswith("SUCCESS")) else TEXT_COLOR
            position = anchor - up * spacing * index
            item = self._text_ids[index] if index < len(self._text_ids) else -1
            new_id = self.client.addUserDebugText(
                line,
                list(position),
                textColorRGB=list(color),
                textSize=1.3,
                replaceItemUniqueId=item,
            )
            if index < len(self._text_ids):
                self._text_ids[index] = new_id
            else:
                self._text_ids.append(new_id)
        for item in self._text_ids[len(lines) :]:
            self.client.removeUserDebugItem(item)
        del self._text_ids[len(lines) :]
        self._text_lines = list(lines)


# ------------------------------------------------------------------ frames
@dataclass
class Camera:
    """Matrices of a rendered frame (column-major 16-lists, as PyBullet gives them)."""

    width: int
    height: int
    view: list[float]
    projection: list[float]

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (n, 2) of world points (n, 3) and whether each lies in front."""
        points = np.atleast_2d(np.asarray(points, dtype=float))
        homogeneous = np.hstack([points, np.ones((len(points), 1))])
        view = np.asarray(self.view).reshape(4, 4).T
        projection = np.asarray(self.projection).reshape(4, 4).T
        clip = homogeneous @ (projection @ view).T
        w = clip[:, 3]
        in_front = w > 1e-6
        ndc = clip[:, :2] / np.where(in_front, w, 1.0)[:, None]
        pixels = np.empty_like(ndc)
        pixels[:, 0] = (ndc[:, 0] + 1.0) * 0.5 * self.width
        pixels[:, 1] = (1.0 - ndc[:, 1]) * 0.5 * self.height
        return pixels, in_front


def workspace_camera(env, width: int, height: int, fov: float = 50.0) -> Camera:
    """The environment's workspace framing (`camera_target()`) at any size."""
    target, distance, yaw, pitch = env.unwrapped.camera_target()
    view = pybullet.computeViewMatrixFromYawPitchRoll(target, distance, yaw, pitch, 0.0, 2)
    projection = pybullet.computeProjectionMatrixFOV(fov, width / height, 0.05, 10.0)
    return Camera(width, height, list(view), list(projection))


def render_frame(env, camera: Camera) -> np.ndarray:
    """RGB frame (h, w, 3) of the scene, off-screen (no display needed), with a floor
    grid where nothing was rendered: the reach scene has no floor, and an arm floating
    on white gives no sense of depth or height."""
    client = env.unwrapped.sim.client
    _, _, rgba, _, segmentation = client.getCameraImage(
        camera.width,
        camera.height,
        camera.view,
        camera.projection,
        renderer=pybullet.ER_TINY_RENDERER,
    )
    frame = np.asarray(rgba, dtype=np.uint8).reshape(camera.height, camera.width, 4)[:, :, :3]
    background = np.asarray(segmentation).reshape(camera.height, camera.width) < 0
    return floor_grid(frame, background, camera)


def floor_grid_lines() -> list[tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """World segments of a 25 cm grid on the floor (z = 0) around the robot."""
    lines = []
    for tick in np.arange(-1.0, 1.51, 0.25):
        lines.append(((tick, -1.0, 0.0), (tick, 1.0, 0.0)))  # along y at x = tick
        if abs(tick) <= 1.0:
            lines.append(((-1.0, tick, 0.0), (1.5, tick, 0.0)))  # along x at y = tick
    return lines


def floor_grid(
    frame: np.ndarray, background: np.ndarray, camera: Camera, color=FLOOR_GRID_RGB
) -> np.ndarray:
    """`frame` with the floor grid drawn where `background` is True (nothing rendered)."""
    grid = Image.fromarray(frame.copy())
    draw = ImageDraw.Draw(grid)
    for start, end in floor_grid_lines():
        # Segments in short pieces, so a line that passes behind the camera is
        # dropped piece by piece instead of projected through it.
        points = np.linspace(start, end, 24)
        pixels, in_front = camera.project(points)
        for i in range(len(points) - 1):
            if in_front[i] and in_front[i + 1]:
                draw.line([tuple(pixels[i]), tuple(pixels[i + 1])], fill=color, width=1)
    out = frame.copy()
    out[background] = np.asarray(grid)[background]
    return out


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def _rgb255(color) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in color[:3])


def draw_overlay(
    frame: np.ndarray, env, camera: Camera, status: EpisodeStatus | None
) -> np.ndarray:
    """`frame` with the trail, marker rings and labels, and the text block drawn on it."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image, "RGBA")
    scale = camera.height / 480.0
    font = _font(max(10, int(round(15 * scale))))

    points = trail_points(env)
    if len(points) >= 2:
        pixels, in_front = camera.project(np.asarray(points))
        visible = [tuple(p) for p, ok in zip(pixels, in_front) if ok]
        if len(visible) >= 2:
            draw.line(visible, fill=(*_rgb255(TRAIL_COLOR), 230), width=max(2, int(3 * scale)))

    for name, point, color in (
        ("goal", goal_point(env), GOAL_COLOR),
        ("lift target", lift_target_point(env), LIFT_TARGET_RGBA),
        ("cube", cube_point(env), (0.9, 0.2, 0.2)),
    ):
        if point is None:
            continue
        pixels, in_front = camera.project(point[None])
        if not in_front[0]:
            continue
        x, y = pixels[0]
        radius = 9 * scale
        draw.ellipse(
            (x - radius, y - radius, x + radius, y + radius),
            outline=(*_rgb255(color), 255),
            width=max(1, int(2 * scale)),
        )
        draw.text((x + radius + 3, y - radius - 3), name, fill=(20, 20, 20, 255), font=font)

    if status is not None:
        lines = status.lines()
        line_height = font.getbbox("Ag")[3] + int(4 * scale)
        box_width = max(draw.textlength(line, font=font) for line in lines) + 16 * scale
        draw.rectangle(
            (6, 6, 6 + box_width, 6 + line_height * len(lines) + 8 * scale),
            fill=(255, 255, 255, 190),
        )
        for index, line in enumerate(lines):
            success_line = status.success and line.startswith("SUCCESS")
            color = _rgb255(SUCCESS_COLOR) if success_line else (15, 15, 15)
            draw.text(
                (6 + 8 * scale, 6 + 4 * scale + index * line_height), line, fill=color, font=font
            )
    return np.asarray(image)
