"""iiwa-rl: reinforcement learning for the KUKA LBR iiwa 14, from simulation to the controller."""

__version__ = "0.1.0"
