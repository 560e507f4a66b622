"""Training: the loop (loop.py), what a stage trains (stages.py), the optimizer's groups and schedule
(optim.py), run folders and resumable state (checkpointing.py), the accelerator (accelerator.py), what the
run measures (meters.py, cost.py) and the parameter counts of --print-config (summary.py)."""
