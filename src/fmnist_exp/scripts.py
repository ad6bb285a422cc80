"""The console scripts `pip install` puts beside `python -m fmnist_exp.<command>` (pyproject.toml).

A console script passes its function's return value to sys.exit, which would print a returned
accuracy or table and exit 1; so each script runs its command's main and returns nothing.
"""

from __future__ import annotations


def evaluate() -> None:
    from fmnist_exp import evaluate

    evaluate.main()


def predict() -> None:
    from fmnist_exp import predict

    predict.main()


def report() -> None:
    from fmnist_exp import report

    report.main()


def bench() -> None:
    from fmnist_exp import bench

    bench.main()
