"""One PyBullet physics client per `BulletSim`.

Every call goes through the instance's own `PhysicsClient`, so several simulations in one
process (vector environments, a viewer beside a trainer) never share global state.
Also owns asset lookup: the project's URDFs reference meshes of the installed
pybullet_data package as ``package://pybullet_data/...``, which PyBullet itself cannot
resolve; `load_urdf` rewrites that prefix into a cached copy of the file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pybullet
import pybullet_data

from iiwa_rl.sim.native import quiet_native_stdout

_PACKAGE_PREFIX = "package://pybullet_data/"


# Functions that take no physicsClientId (pure math on the client side).
_CLIENTLESS = {
    "invertTransform",
    "multiplyTransforms",
    "getMatrixFromQuaternion",
    "getEulerFromQuaternion",
    "computeViewMatrixFromYawPitchRoll",
    "computeProjectionMatrixFOV",
    "computeViewMatrix",
    "getQuaternionFromEuler",
    "getAxisAngleFromQuaternion",
    "getQuaternionSlerp",
    "getDifferenceQuaternion",
}


class PhysicsClient:
    """The pybullet module bound to one physics server: ``client.stepSimulation()`` calls
    ``pybullet.stepSimulation(physicsClientId=...)``. Unlike pybullet_utils' BulletClient,
    each bound function is cached on first use, so a hot loop pays for no lookup."""

    def __init__(self, connection_mode: int, options: str = ""):
        self.client_id = pybullet.connect(connection_mode, options=options)
        if self.client_id < 0:
            raise RuntimeError("could not connect to a PyBullet physics server")

    def __getattr__(self, name: str):
        attribute = getattr(pybullet, name)
        if callable(attribute) and name not in _CLIENTLESS:
            attribute = functools.partial(attribute, physicsClientId=self.client_id)
        setattr(self, name, attribute)
        return attribute


def asset_path(*parts: str) -> Path:
    """Path of a file under the project's assets/ (override the root with IIWA_RL_ASSETS)."""
    root = os.environ.get("IIWA_RL_ASSETS")
    base = Path(root) if root else Path(__file__).resolve().parents[2] / "assets"
    path = base.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"asset {path} not found; set IIWA_RL_ASSETS to the project's assets/ folder"
        )
    return path


def _resolved_urdf(path: Path) -> str:
    """A copy of the URDF with package://pybullet_data/ made absolute, cached by content."""
    text = path.read_text()
    if _PACKAGE_PREFIX not in text:
        return str(path)
    resolved = text.replace(_PACKAGE_PREFIX, pybullet_data.getDataPath().rstrip("/") + "/")
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:16]
    cache_dir = Path(tempfile.gettempdir()) / "iiwa_rl_urdf"
    cache_dir.mkdir(exist_ok=True)
    target = cache_dir / f"{path.stem}-{digest}.urdf"
    if not target.exists():
        # Write then rename: parallel workers may race to create the same file.
        partial = cache_dir / f".{target.name}.{os.getpid()}"
        partial.write_text(resolved)
        os.replace(partial, target)
    return str(target)


class DisplayUnavailableError(RuntimeError):
    """The PyBullet GUI was asked for where no display can be opened."""


def _check_display() -> None:
    """Raise DisplayUnavailableError unless an X display can be opened.

    On Linux the PyBullet GUI opens an X display, and where it cannot ("cannot connect to
    X server") it ends the whole Python process, which no caller can catch: gymnasium's
    check_env with render checks kills its caller. So the display is opened first with
    libX11's own XOpenDisplay, which returns NULL instead of exiting. macOS and Windows
    use their own window systems and are not checked."""
    if not sys.platform.startswith("linux"):
        return
    display = os.environ.get("DISPLAY")
    advice = "run with a display, under xvfb-run, or use render_mode='rgb_array' (headless)"
    if not display:
        raise DisplayUnavailableError(
            f"render_mode='human' opens the PyBullet GUI, which needs an X display, and "
            f"DISPLAY is not set: {advice}"
        )
    libx11 = _load_libx11()
    if libx11 is None:
        raise DisplayUnavailableError(
            f"render_mode='human' opens the PyBullet GUI, which needs libX11, and it is not "
            f"installed: {advice}"
        )
    handle = libx11.XOpenDisplay(display.encode())
    if not handle:
        raise DisplayUnavailableError(
            f"render_mode='human' opens the PyBullet GUI, and the X display DISPLAY={display} "
            f"cannot be opened (no X server there?): {advice}"
        )
    libx11.XCloseDisplay(handle)


def _load_libx11():
    import ctypes
    import ctypes.util

    for name in ("libX11.so.6", ctypes.util.find_library("X11")):
        if not name:
            continue
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        library.XOpenDisplay.restype = ctypes.c_void_p
        library.XOpenDisplay.argtypes = [ctypes.c_char_p]
        library.XCloseDisplay.argtypes = [ctypes.c_void_p]
        return library
    return None


class BulletSim:
    """A PyBullet world stepped at a fixed physics rate.

    Args:
        gui: open the PyBullet GUI (one per process is PyBullet's own limit).
        physics_hz: physics steps per second (the integrator's time step is 1/physics_hz).
        solver_iterations: at most this many constraint-solver iterations per step; joint
            motors are constraints, so fewer iterations track less stiffly but step faster.
        solver_residual_threshold: the solver stops early below this residual. PyBullet's
            default (1e-7) keeps iterating long after joint targets are held to 1e-4 rad;
            1e-4 cuts a grasp scene's step time by a third.
    """

    def __init__(
        self,
        gui: bool = False,
        physics_hz: float = 240.0,
        solver_iterations: int = 30,
        solver_residual_threshold: float = 1e-4,
    ):
        if physics_hz <= 0:
            raise ValueError(f"physics_hz must be positive, got {physics_hz}")
        if gui:
            _check_display()  # before PyBullet, which would exit the process instead
        self.gui = gui
        self.physics_hz = float(physics_hz)
        options = "--width=1024 --height=768" if gui else ""
        with quiet_native_stdout():  # "argv[0]=" on every connect
            self.client = PhysicsClient(pybullet.GUI if gui else pybullet.DIRECT, options)
        self.client.setTimeStep(1.0 / self.physics_hz)
        self.client.setGravity(0.0, 0.0, -9.81)
        self.client.setPhysicsEngineParameter(
            numSolverIterations=solver_iterations,
            solverResidualThreshold=solver_residual_threshold,
            deterministicOverlappingPairs=1,
        )
        if gui:
            self.client.configureDebugVisualizer(pybullet.COV_ENABLE_GUI, 0)
        # Called after every physics step, by whoever steps the world: a robot enforces
        # limits that PyBullet cannot hold per joint (see robot.py, UrdfArm._limit_joint_speeds).
        self.post_step_hooks: list[Callable[[], None]] = []
        # Called before every physics step: external forces (PyBullet clears them after
        # each step), such as a randomised joint friction.
        self.pre_step_hooks: list[Callable[[], None]] = []
        self.physics_steps = 0  # taken so far; tells a hook's reading from a stale one

    def load_urdf(
        self,
        name: str,
        position=(0.0, 0.0, 0.0),
        orientation=(0.0, 0.0, 0.0, 1.0),
        fixed_base: bool = False,
        flags: int = 0,
        global_scaling: float = 1.0,
        maximal_coordinates: bool = False,
    ) -> int:
        """Load assets/urdf/<name> and return its body id.

        `maximal_coordinates` makes a single rigid body instead of a multibody: for a free
        box resting on another it cuts the physics step's cost about sevenfold."""
        path = asset_path("urdf", name)
        with quiet_native_stdout():
            return self.client.loadURDF(
                _resolved_urdf(path),
                basePosition=list(position),
                baseOrientation=list(orientation),
                useFixedBase=fixed_base,
                flags=flags,
                globalScaling=global_scaling,
                useMaximalCoordinates=maximal_coordinates,
            )

    def step(self, substeps: int = 1) -> None:
        hooks, before = self.post_step_hooks, self.pre_step_hooks
        for _ in range(substeps):
            for hook in before:
                hook()
            self.client.stepSimulation()
            self.physics_steps += 1
            for hook in hooks:
                hook()

    def body_pose(self, body_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Base position (m) and orientation quaternion (x, y, z, w) of a body."""
        position, orientation = self.client.getBasePositionAndOrientation(body_id)
        return np.asarray(position), np.asarray(orientation)

    def close(self) -> None:
        if self.client is not None and self.client.isConnected():
            self.client.disconnect()
        self.client = None

    def __del__(self):  # a dropped env must not leak its physics server
        try:
            if getattr(self, "client", None) is not None:
                self.close()
        except Exception:
            pass
