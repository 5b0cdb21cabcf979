"""Run plumbing shared by trainers, evaluation and batch commands: output directories,
start-up, random state, metrics, console progress and checkpoints.

It sits above the engines and below ``trainers/`` and ``workflows/``, so evaluation and
batch commands use it without importing any trainer.
"""
