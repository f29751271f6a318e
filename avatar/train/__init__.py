"""The training runner: stages, losses, checkpoints, resume, logging."""
