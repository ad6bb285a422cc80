"""Fashion-MNIST loading: find the IDX files offline first, verify them, split them.

Nothing here imports TensorFlow: the arrays stay uint8 (the float32 copy of the training set alone
would be 188 MB) and are scaled inside the model. streams.py turns them into training and test streams.

Reading the files (bounded, verified, cached decoded) is data/idx.py's.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fmnist_exp.config.schema import DEFAULT_MIRROR
from fmnist_exp.data import idx
from fmnist_exp.errors import DataError, DownloadError, UserError

if TYPE_CHECKING:
    from fmnist_exp.config.schema import DataConfig

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28, 1)

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

# The sha256 of the DECOMPRESSED canonical files: re-compressed copies (Debian's) pass too.
CANONICAL_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# A folder that is not the canonical release (the test subset in tests/data) declares its own
# decompressed checksums in this file, in `sha256sum` format.
MANIFEST_NAME = "SHA256SUMS"


def keras_cache() -> Path:
    """Where keras.datasets keeps its copy: read from HOME at each call, not once at import, so that
    a process whose environment was set after the import (a forked child) looks in its own home."""
    return Path.home() / ".keras" / "datasets" / "fashion-mnist"


DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """uint8 images (N, 28, 28, 1) and int64 labels (N,). `validation` is None when there is none."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]
    source: Path


def candidate_dirs(configured: str | None) -> list[Path]:
    """The places looked at, in order: the configured folder, the Keras cache, Debian's package."""
    places = [Path(configured).expanduser()] if configured else []
    return places + [keras_cache(), DEBIAN_DIR]


def _has_all_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES.values())


def locate(configured: str | None, download: bool = True, mirror: str = DEFAULT_MIRROR) -> Path:
    """Return the first folder that holds all four files, downloading into the Keras cache if allowed.

    A configured folder is all or nothing: one that does not exist, or lacks any of the four files,
    is an error naming what is missing. Silently falling back to another copy would hide a typo in
    `data.dir` or a half-copied folder.
    """
    if configured and not Path(configured).expanduser().is_dir():
        raise DataError(
            f"data.dir: {configured!r} is not a folder. Point data.dir (or FMNIST_DATA_DIR) at the folder "
            f"holding the four Fashion-MNIST files: {', '.join(FILES.values())}."
        )
    missing = [name for name in FILES.values() if configured and not (Path(configured).expanduser() / name).is_file()]
    if missing:
        raise DataError(
            f"data.dir: {configured} lacks {', '.join(missing)}; it must hold all four Fashion-MNIST files."
        )
    places = candidate_dirs(configured)
    for folder in places:
        if _has_all_files(folder):
            return folder
    looked = f"Fashion-MNIST is not in {', '.join(str(place) for place in places)}"
    fixes = (
        "set FMNIST_DATA_DIR (or data.dir=) to a folder holding the four .gz files, "
        "or `apt-get install dataset-fashion-mnist`"
    )
    if not download:
        raise DataError(f"data: {looked}, and data.download=false. Fix: {fixes}, or allow data.download=true.")
    try:
        return fetch(keras_cache(), mirror)
    except DownloadError as error:
        raise DataError(
            f"data.mirror: {looked}, and the download failed: {error}. Fix: {fixes}, or name a reachable data.mirror="
        ) from None


def fetch(target: Path, mirror: str = DEFAULT_MIRROR) -> Path:
    """Download the four files into `target`, each verified and then renamed into place atomically.

    Folders this call created are removed again when it fails with nothing in them, so an offline
    attempt leaves no empty cache behind.
    """
    created = [folder for folder in (target, *target.parents) if not folder.exists()]
    target.mkdir(parents=True, exist_ok=True)
    try:
        for name in FILES.values():
            if (target / name).is_file():
                continue
            url = mirror.rstrip("/") + "/" + name
            with tempfile.NamedTemporaryFile(dir=target, prefix=f".{name}.", delete=False) as partial:
                try:
                    _copy_with_progress(url, partial, name)
                    partial.close()
                    _verify_file(Path(partial.name), CANONICAL_SHA256[name], display=url)
                    os.replace(partial.name, target / name)
                finally:
                    if os.path.exists(partial.name):
                        os.unlink(partial.name)
    except BaseException:
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or not ours to remove): leave it and everything above it
        raise
    return target


def _copy_with_progress(url: str, out, name: str) -> None:
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (URL from config)
            total = int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if total:
                    print(f"\rdownloading {name}: {100 * done // total}%", end="", file=sys.stderr)
    except (OSError, ValueError) as error:  # URLError, HTTPError, timeouts, resets; ValueError: a bad URL
        if done:
            print(file=sys.stderr)  # end the progress line before the error
        raise DownloadError(f"{url}: {getattr(error, 'reason', None) or error}") from None
    print(f"\rdownloaded {name}: {done:,} bytes", file=sys.stderr)


def _decompressed_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except (OSError, EOFError) as error:
        raise DataError(
            f"{path}: not a readable gzip file ({error}). It is probably truncated or corrupt: "
            "delete it and copy or download it again."
        ) from error
    return digest.hexdigest()


def _verify_file(path: Path, expected: str, display: str | None = None) -> None:
    idx.check_sha256(display or path, _decompressed_sha256(path), expected)


def expected_checksums(folder: Path) -> dict[str, str]:
    """The canonical table, unless the folder declares its own in SHA256SUMS (which must name all four files)."""
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return dict(CANONICAL_SHA256)
    table = {}
    try:
        lines = manifest.read_text(encoding="ascii").splitlines()
    except (UnicodeDecodeError, OSError) as error:
        raise DataError(f"{manifest}: not a text file in sha256sum format ({error}); fix or delete it.") from error
    for number, line in enumerate(lines, start=1):
        if line.strip():
            fields = line.split(maxsplit=1)
            if len(fields) != 2 or len(fields[0]) != 64 or any(c not in "0123456789abcdef" for c in fields[0].lower()):
                raise DataError(f"{manifest}: line {number} is not '<sha256>  <file name>': {line[:80]!r}")
            digest, name = fields
            table[name.strip().lstrip("*")] = digest.lower()
    missing = [name for name in FILES.values() if name not in table]
    if missing:
        raise DataError(f"{manifest}: no checksum for {', '.join(missing)}.")
    return table


def read_pair(
    folder: Path,
    images_name: str,
    labels_name: str,
    checksums: dict[str, str] | None = None,
    cache: idx.DecodedCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split; with `checksums` ({file name: sha256}) each file is verified
    (and, with a `cache`, served from it when it holds the verified content)."""
    checksums = checksums or {}
    images = idx.read_idx(folder / images_name, idx.IMAGES_MAGIC, checksums.get(images_name), cache)
    labels = idx.read_idx(folder / labels_name, idx.LABELS_MAGIC, checksums.get(labels_name), cache).astype(np.int64)
    if images.shape[1:] != IMAGE_SHAPE[:2]:
        raise DataError(f"{folder / images_name}: images are {images.shape[1:]}, expected 28x28.")
    if len(images) != len(labels):
        raise DataError(
            f"{folder}: {images_name} holds {len(images):,} images but {labels_name} "
            f"{len(labels):,} labels; the pair must match."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{folder / labels_name}: labels outside 0..9.")
    return images[..., np.newaxis], labels


def check_splits(splits: Splits, held_out: bool = False) -> None:
    """Each side of a split needs at least one image of every class, or its figures mean nothing.

    With a held-out validation split (`held_out`), both of its sides depend on data.validation_fraction.
    """
    train_key = "data.validation_fraction (with data.max_train_samples)" if held_out else "data.max_train_samples"
    sides = {train_key: splits.train, "data.max_test_samples": splits.test}
    if splits.validation is not None:
        sides["data.validation_fraction"] = splits.validation
    for key, (_, labels) in sides.items():
        present = len(np.unique(labels))
        if present < NUM_CLASSES:
            raise UserError(
                f"{key}: leaves {len(labels)} images covering {present} of the {NUM_CLASSES} classes; "
                "each of the training, validation and test sets needs at least one image of every class"
            )


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out) with `fraction` of every class held out, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(len(members) * fraction))
        held_out.append(rng.choice(members, size=count, replace=False))
    held = np.sort(np.concatenate(held_out)) if held_out else np.array([], dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held, assume_unique=True)
    return keep, held


def load(config: DataConfig, seed: int) -> Splits:
    """Locate, verify and read the data set, then cut the subsets and the validation split.

    A verified load goes through the decoded cache (`DecodedCache`); with verify=false the .gz files
    are read directly and nothing is cached. Images served from the cache are read-only views.
    """
    folder = locate(config.dir, download=config.download, mirror=config.mirror)
    checksums = expected_checksums(folder) if config.verify else None
    cache = idx.DecodedCache(idx.cache_dir()) if config.verify else None
    train_images, train_labels = read_pair(folder, FILES["train_images"], FILES["train_labels"], checksums, cache)
    test_images, test_labels = read_pair(folder, FILES["test_images"], FILES["test_labels"], checksums, cache)
    if config.max_train_samples is not None:
        train_images = train_images[: config.max_train_samples]
        train_labels = train_labels[: config.max_train_samples]
    if config.max_test_samples is not None:
        test_images = test_images[: config.max_test_samples]
        test_labels = test_labels[: config.max_test_samples]

    validation = None
    if config.validation == "holdout":
        keep, held = stratified_split(train_labels, config.validation_fraction, seed)
        validation = (train_images[held], train_labels[held])
        train_images, train_labels = train_images[keep], train_labels[keep]
    elif config.validation == "test":
        # The article's way: the test set doubles as validation data. Faithful, but nothing chosen
        # by looking at these figures is an honest test result.
        validation = (test_images, test_labels)
    return Splits(
        train=(train_images, train_labels),
        validation=validation,
        test=(test_images, test_labels),
        source=folder,
    )
