"""One experiment: its stages, what feeds Keras, the device, the callbacks, and the run's output folder."""
