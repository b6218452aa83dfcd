"""The tasks: reach a TCP goal, grasp and lift a cube."""
