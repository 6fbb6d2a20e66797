"""Training: ``train(cfg)`` (loop.py), the update orders (step.py), what a run builds (setup.py), the
train state and checkpoints (state.py), grids and evaluations (outputs.py), torchrun (distributed.py)."""
