"""Optimizers and schedules built from config."""

from __future__ import annotations

import pytest

from fmnist_exp.model import optim
from helpers import typed_config

pytestmark = pytest.mark.unit  # no training, no subprocess: the inner loop (pytest -m unit)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_each_optimizer_builds_with_its_parameters(name):
    config = typed_config([f"optimizer={name}", "optimizer.learning_rate=0.02"]).optimizer
    optimizer = optim.build(config, steps_per_epoch=10, epochs=2)
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.02)
    if name == "sgd":
        assert optimizer.momentum == 0.9 and optimizer.nesterov


def test_cosine_with_warmup_rises_then_decays_to_alpha():
    config = typed_config(
        [
            "optimizer.schedule.name=cosine",
            "optimizer.schedule.warmup_epochs=1",
            "optimizer.schedule.alpha=0.1",
            "epochs=4",
        ]
    ).optimizer
    schedule = optim.build_schedule(config, steps_per_epoch=10, epochs=4)
    rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert rates[0] < rates[1] < rates[2] == pytest.approx(0.001)
    assert rates[3] < rates[2]
    assert rates[4] == pytest.approx(0.0001)


def test_exponential_decays_per_epoch():
    config = typed_config(["optimizer.schedule.name=exponential", "optimizer.schedule.decay_rate=0.5"]).optimizer
    schedule = optim.build_schedule(config, steps_per_epoch=10, epochs=3)
    assert float(schedule(20)) == pytest.approx(0.001 * 0.25)
