"""A run's training, validation and test sets as MLflow datasets: what they are, not their pixels.

Each set is an `mlflow.data` NumPy dataset over the arrays already loaded; MLflow stores its name,
digest, source, schema and profile, never the arrays. Its digest is a sha256 of what decides its
content: the decompressed sha256 of the split's two files (the checksums `data.py` verifies, or the
folder's SHA256SUMS), the first-N cut (`data.max_*_samples`) and, for a held-out validation set, its
fraction and seed, and the image count. Two runs on the same images get the same digest; two runs on
different subsets differ. MLflow keeps 36 characters of a digest; the profile holds the whole sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fmnist_exp.data import fashion_mnist as data
from fmnist_exp.runtime import private_api

if TYPE_CHECKING:
    from fmnist_exp.config.schema import ExperimentConfig

NAME = "fashion-mnist"
DIGEST_LENGTH = 36  # MLflow's limit for a dataset digest


def origin(folder: Path, configured: str | None) -> str:
    """Where the files were found, in the words of data.locate's search order."""
    folder = Path(folder).expanduser().resolve()
    if configured and folder == Path(configured).expanduser().resolve():
        return "data.dir"
    if folder == data.keras_cache().resolve():
        return "Keras cache"
    if folder == data.DEBIAN_DIR.resolve():
        return "Debian package dataset-fashion-mnist"
    return "folder"


def recipes(config: ExperimentConfig, splits: data.Splits) -> dict[str, tuple[str, dict]]:
    """{context: (dataset name, what decides its images)}: the files' checksums and how it was cut."""
    checksums = data.expected_checksums(Path(splits.source))
    cut = config.data

    def recipe(split: str, first: int | None, images: int, **how) -> dict:
        names = (data.FILES[f"{split}_images"], data.FILES[f"{split}_labels"])
        return {"files": {name: checksums[name] for name in names}, "first": first, **how, "images": images}

    holdout = {"fraction": cut.validation_fraction, "seed": config.seed}
    kept = {"holdout": {**holdout, "part": "kept"}} if cut.validation == "holdout" else {}
    test = (f"{NAME}-test", recipe("test", cut.max_test_samples, len(splits.test[0])))
    chosen = {"training": (f"{NAME}-train", recipe("train", cut.max_train_samples, len(splits.train[0]), **kept))}
    if splits.validation is not None and cut.validation == "holdout":
        held = {"holdout": {**holdout, "part": "held out"}}
        chosen["validation"] = (
            f"{NAME}-validation",
            recipe("train", cut.max_train_samples, len(splits.validation[0]), **held),
        )
    elif splits.validation is not None:
        chosen["validation"] = test  # validation=test, the article's way: the very same images
    chosen["test"] = test
    return chosen


def sha256_of(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def describe(config: ExperimentConfig, splits: data.Splits) -> dict:
    """{context: mlflow.data Dataset} for training, validation (when there is one) and test."""
    from mlflow.data.numpy_dataset import NumpyDataset

    class ImageSet(NumpyDataset):
        """A NumPy dataset whose profile also says how many images, from where, and its whole sha256."""

        def __init__(self, images, labels, source, name, digest, facts):
            super().__init__(features=images, source=source, targets=labels, name=name, digest=digest)
            self._facts = facts

        @property
        def profile(self):
            return {**self._facts, **super().profile}

    folder = str(Path(splits.source).expanduser().resolve())
    source = private_api.local_dataset_source(folder)
    arrays = {"training": splits.train, "validation": splits.validation, "test": splits.test}
    where = origin(splits.source, config.data.dir)
    described = {}
    for context, (name, recipe) in recipes(config, splits).items():
        images, labels = arrays[context]  # type: ignore[misc]  # recipes() names validation only when it exists
        sha256 = sha256_of(recipe)
        facts = {
            "images": int(len(images)),
            "sha256": sha256,
            "origin": where,
            "checksums_verified": bool(config.data.verify),
            "class_counts": np.bincount(labels, minlength=data.NUM_CLASSES).tolist(),
        }
        described[context] = ImageSet(images, labels, source, name, sha256[:DIGEST_LENGTH], facts)
    return described
