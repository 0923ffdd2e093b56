"""What train.py needs beyond its loop: the run folder's saved state (checkpoint.py) and the
checks of a run's settings before anything loads (checks.py)."""
