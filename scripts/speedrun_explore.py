"""Bare Keras trials behind the speedrun preset: a fast_cnn-shaped model, one epoch line each.

Each call trains one candidate with `model.fit` on the held-out split the runner uses
(`data.validation=holdout`, 54,000 images), or with --full on all 60,000 against the test set, and
prints each epoch's seconds, images/s and validation accuracy, then one JSON line. The table of what
was tried in docs/performance.md ("Where the time goes") comes from these calls, for example:

    python scripts/speedrun_explore.py --width 16 --batch 128 --epochs 3 --lr 0.005 --dropout 0.1 --seed 43
    KERAS_BACKEND=jax python scripts/speedrun_explore.py --width 16 --batch 256 --epochs 2 --images 20000
    python scripts/speedrun_explore.py --width 16 --batch 128 --epochs 1 --images 30000 --bf16

It reads the data through the runner's loader (FMNIST_DATA_DIR, checksums verified).
"""

from __future__ import annotations

import argparse
import json
import os
import time

started = time.perf_counter()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage (x2, x4 after)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.005, help="Adam's peak rate, cosine decay to 0")
    parser.add_argument("--warmup", type=float, default=0.0, help="epochs of linear warm-up")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--images", type=int, default=0, help="the first N training images only (0: all)")
    parser.add_argument("--bf16", action="store_true", help="Keras's mixed_bfloat16 policy")
    parser.add_argument("--full", action="store_true", help="train on all 60,000, validate on the test set")
    return parser.parse_args()


def model(keras, width: int, dropout: float):
    """fast_cnn's stack (conf/model/fast_cnn.yaml) at `width`."""
    layers = keras.layers

    def stage(filters: int) -> list:
        return [layers.Conv2D(filters, 3, padding="same", use_bias=False), layers.BatchNormalization(momentum=0.9),
                layers.Activation("relu"), layers.MaxPooling2D(2)]  # fmt: skip

    body = stage(width) + stage(2 * width) + stage(4 * width)
    head = [layers.Flatten(), layers.Dropout(dropout), layers.Dense(10), layers.Activation("softmax", dtype="float32")]
    return keras.Sequential([keras.Input((28, 28, 1)), layers.Rescaling(1 / 255.0), *body, *head])


def main() -> None:
    options = arguments()
    import keras

    from fmnist_exp.config.schema import DataConfig
    from fmnist_exp.data.fashion_mnist import load

    keras.utils.set_random_seed(options.seed)
    if options.bf16:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    imported = time.perf_counter() - started
    splits = load(DataConfig(dir=os.environ.get("FMNIST_DATA_DIR"), validation="none" if options.full else "holdout"),
                  options.seed)  # fmt: skip
    images, labels = splits.train
    checked = splits.test if options.full else splits.validation
    if options.images:
        images, labels = images[: options.images], labels[: options.images]
    network = model(keras, options.width, options.dropout)
    steps = -(-len(images) // options.batch) * options.epochs
    warmup = int(options.warmup * steps / options.epochs)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else options.lr, decay_steps=max(1, steps - warmup),
        warmup_target=options.lr if warmup else None, warmup_steps=warmup,
    )  # fmt: skip
    network.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.began
            print(f"epoch {epoch + 1} {seconds:.1f}s {len(images) / seconds:.0f} img/s "
                  f"acc={logs['accuracy']:.4f} val={logs['val_accuracy']:.4f}", flush=True)  # fmt: skip

    fitting = time.perf_counter()
    history = network.fit(images, labels, batch_size=options.batch, epochs=options.epochs, validation_data=checked,
                          verbose=0, callbacks=[EpochLine()], shuffle=True)  # fmt: skip
    print(json.dumps({
        "val": round(float(history.history["val_accuracy"][-1]), 4), "args": vars(options),
        "backend": keras.backend.backend(), "params": network.count_params(), "import_s": round(imported, 1),
        "fit_s": round(time.perf_counter() - fitting, 1), "total_s": round(time.perf_counter() - started, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
