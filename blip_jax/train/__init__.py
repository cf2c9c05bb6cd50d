"""Training: train state, the sharded jitted step, the loop, checkpoints and metrics."""
