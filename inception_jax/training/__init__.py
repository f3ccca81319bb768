"""The training step, the loop and what a run leaves behind (checkpoints, logs, its directory)."""
