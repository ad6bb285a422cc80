"""Optimizer and learning-rate schedule from config, through a fixed table (no names from YAML imported)."""

from __future__ import annotations

from fmnist_exp.config.schema import OPTIMIZER_TABLE, OptimizerConfig


def build_schedule(config: OptimizerConfig, steps_per_epoch: int, epochs: int):
    """A float for `constant`, else a keras LearningRateSchedule stepping once per batch."""
    from keras import optimizers

    schedule = config.schedule
    warmup_steps = int(round(schedule.warmup_epochs * steps_per_epoch))
    if schedule.name == "constant":
        return config.learning_rate
    if schedule.name == "cosine":
        return optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else config.learning_rate,
            decay_steps=max(1, epochs * steps_per_epoch - warmup_steps),
            alpha=schedule.alpha,
            warmup_target=config.learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    # exponential; validation allows a warm-up with cosine only (Keras's own warm-up), which keeps
    # every schedule a built-in class that a saved model can be loaded with.
    return optimizers.schedules.ExponentialDecay(
        initial_learning_rate=config.learning_rate,
        decay_steps=max(1, int(round(schedule.decay_epochs * steps_per_epoch))),
        decay_rate=schedule.decay_rate,
    )


def build(config: OptimizerConfig, steps_per_epoch: int, epochs: int):
    """The keras optimizer named by `config.name`, with only the parameters the config sets."""
    from keras import optimizers

    keyword_arguments = {
        name: getattr(config, name) for name in OPTIMIZER_TABLE[config.name][1] if getattr(config, name) is not None
    }
    if config.clipnorm is not None:
        keyword_arguments["clipnorm"] = config.clipnorm
    optimizer_class = getattr(optimizers, OPTIMIZER_TABLE[config.name][0])
    return optimizer_class(learning_rate=build_schedule(config, steps_per_epoch, epochs), **keyword_arguments)
