"""User tools that are not the model: the memory planner (python -m tools.memory)."""
