"""The model a config describes: the layer registry, optimizers and schedules, the Keras backend, and the whole-config check."""
