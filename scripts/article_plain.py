"""The article's recipe as a plain Keras script: no runner, no Hydra, no MLflow, no tf.data.

It answers one question about `experiment=article`: does a collapse seen in the runner come from the
recipe or from the runner? Everything here is written out as the article has it (float images /255,
one-hot labels, categorical cross-entropy, Adam(1e-3, 0.9, 0.999, epsilon 1e-7: the old Keras's
`epsilon=None`), batch 32, the test set as validation data, `model.fit`'s own shuffling) plus the
head our seed_cnn completes the article with. It reads the four IDX files itself, so the runner's
loader is not under test either. One line per epoch on stdout and a CSV (epoch, loss, accuracy,
val_loss, val_accuracy, seconds):

    python scripts/article_plain.py --seed 42 --epochs 100 --out article_plain.csv
    KERAS_BACKEND=jax python scripts/article_plain.py ...      # any Keras 3 backend

Compare with `python -m fmnist_exp.run experiment=article seed=42`, whose val_* are test figures too.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import time
from pathlib import Path

import numpy as np

FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file as a NumPy array: images (n, 28, 28) or labels (n,), uint8."""
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    dimensions = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * index : 8 + 4 * index], "big") for index in range(dimensions)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def load(folder: Path, max_train: int | None, max_test: int | None = None) -> dict[str, np.ndarray]:
    arrays = {name: read_idx(folder / file) for name, file in FILES.items()}
    if max_train:
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][:max_train], arrays["y_train"][:max_train]
    if max_test:
        arrays["x_test"], arrays["y_test"] = arrays["x_test"][:max_test], arrays["y_test"][:max_test]
    return arrays


def build_model(keras):
    """The article's layers, then seed_cnn's head (the article's text stops at the second pooling)."""
    from keras.layers import Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
    from keras.regularizers import l2

    return keras.Sequential(
        [
            Input((28, 28, 1)),
            Conv2D(32, (3, 3), padding="same", kernel_regularizer=l2(0.01)),
            Conv2D(32, (5, 5), kernel_regularizer=l2(0.01)),
            MaxPooling2D(pool_size=(2, 2)),
            Conv2D(64, (3, 3), padding="same", kernel_regularizer=l2(0.01)),
            Conv2D(64, (5, 5), kernel_regularizer=l2(0.01)),
            MaxPooling2D(pool_size=(2, 2)),
            Flatten(),
            Dense(512, activation="relu"),
            Dropout(0.5),
            Dense(10, activation="softmax"),
        ]
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="float32", help="a Keras dtype policy, e.g. mixed_bfloat16")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("FMNIST_DATA_DIR", ".")))
    parser.add_argument("--max-train", type=int, default=None, help="the first N training images only")
    parser.add_argument("--max-test", type=int, default=None, help="the first N test images only")
    parser.add_argument("--out", type=Path, default=Path("article_plain.csv"))
    arguments = parser.parse_args(argv)

    import keras

    keras.utils.set_random_seed(arguments.seed)
    keras.mixed_precision.set_global_policy(arguments.precision)
    arrays = load(arguments.data, arguments.max_train, arguments.max_test)
    x_train = arrays["x_train"].reshape(-1, 28, 28, 1).astype("float32") / 255
    x_test = arrays["x_test"].reshape(-1, 28, 28, 1).astype("float32") / 255
    y_train = keras.utils.to_categorical(arrays["y_train"], 10)
    y_test = keras.utils.to_categorical(arrays["y_test"], 10)

    model = build_model(keras)
    model.compile(
        loss="categorical_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False),
        metrics=["accuracy"],
    )
    rows: list[dict] = []

    class EpochRecord(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}}
            row["seconds"] = time.perf_counter() - self.started
            rows.append(row)
            print(
                " ".join(
                    f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}" for key, value in row.items()
                ),
                flush=True,
            )
            with arguments.out.open("w", newline="") as table:  # rewritten each epoch: a killed run keeps its curve
                writer = csv.DictWriter(table, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(rows)

    print(f"keras {keras.__version__} on {keras.backend.backend()}, {model.count_params():,} parameters", flush=True)
    model.fit(
        x_train,
        y_train,
        batch_size=arguments.batch_size,
        epochs=arguments.epochs,
        verbose=0,
        validation_data=(x_test, y_test),
        callbacks=[EpochRecord()],
    )
    return rows


if __name__ == "__main__":
    main()
