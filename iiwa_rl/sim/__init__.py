"""PyBullet simulation of the IIWA14: the client wrapper, the robot, and scene objects."""

from iiwa_rl.sim.native import quiet_native_stdout

with quiet_native_stdout((1, 2)):
    import pybullet  # noqa: F401  (prints its build time to stderr when first imported)

from iiwa_rl.sim.client import BulletSim, DisplayUnavailableError, asset_path
from iiwa_rl.sim.robot import Iiwa14, JointLimits

__all__ = ["BulletSim", "DisplayUnavailableError", "Iiwa14", "JointLimits", "asset_path"]
