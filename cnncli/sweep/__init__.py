"""Hyperparameter sweeps on Optuna: the sweep file (``spec``), the study's storage
(``storage``), the worker processes (``worker``), starting and resuming (``driver``) and the
reports (``report``). Optuna is imported lazily, never by ``cnn --help``."""
