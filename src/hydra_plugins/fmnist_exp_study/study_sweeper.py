"""The study sweeper as a Hydra plugin; the code lives in fmnist_exp.study."""

from fmnist_exp.study import StudySweeper, register

__all__ = ["StudySweeper"]

register()
