"""Seeing the robot and the runs: GUI viewer, headless recording, learning curves."""
