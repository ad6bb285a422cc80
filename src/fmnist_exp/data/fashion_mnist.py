"""Fashion-MNIST loading: find the IDX files offline first, verify them, split them.

Nothing here imports TensorFlow: the arrays stay uint8 (the float32 copy of the training set alone
would be 188 MB) and are scaled inside the model. streams.py turns them into training and test streams.

A verified load keeps a decoded copy of each file in a cache folder (`cache_dir()`: the environment
variable FMNIST_CACHE_DIR, else $XDG_CACHE_HOME/fmnist_exp, else ~/.cache/fmnist_exp) and later
loads memory-map it instead of decompressing, still proving it is the verified content; see
`DecodedCache`. A cache folder that cannot be written costs one log line, never the load.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import mmap
import os
import struct
import sys
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fmnist_exp.config.schema import DEFAULT_MIRROR
from fmnist_exp.errors import DataError, DownloadError

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

KERAS_CACHE = Path.home() / ".keras" / "datasets" / "fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

CACHE_ENV = "FMNIST_CACHE_DIR"

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
    return places + [KERAS_CACHE, DEBIAN_DIR]


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
        return fetch(KERAS_CACHE, mirror)
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
    _check_sha256(display or path, _decompressed_sha256(path), expected)


def _check_sha256(where, actual: str, expected: str) -> None:
    if actual != expected:
        raise DataError(
            f"{where}: decompressed sha256 is {actual}, expected {expected}. "
            "The file is corrupt or not the Fashion-MNIST release: replace it."
        )


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


# No IDX file of Fashion-MNIST holds more than the 70,000 images of the whole data set.
MAX_IDX_BYTES = 70_000 * 28 * 28


def read_bounded(stream, path: Path, expected_magic: int | None = None) -> bytes:
    """An IDX file's decompressed bytes (header and payload), read no further than its header says.

    A gzip that expands far beyond that (a few MB can hold gigabytes of zeros) is refused after
    reading one byte too many, never read whole into memory.
    """
    head = stream.read(4)
    rank = head[3] if len(head) == 4 and head[:2] == b"\0\0" else 0
    wrong_magic = expected_magic is not None and head != struct.pack(">i", expected_magic)
    if rank not in (1, 3) or wrong_magic:
        return head + stream.read(4)  # read_idx names the wrong magic number or the short file
    header = head + stream.read(4 * rank)
    if len(header) < 4 + 4 * rank:
        return header
    dims = struct.unpack(f">{rank}i", header[4:])
    size = math.prod(dims)  # Python's integers: a hostile header's product cannot wrap around
    if min(dims) < 0 or size > MAX_IDX_BYTES:
        raise DataError(f"{path}: header says {dims} ({size:,} bytes), more than Fashion-MNIST holds; replace it.")
    payload = stream.read(size + 1)
    if len(payload) > size:
        raise DataError(
            f"{path}: holds more than the {size:,} bytes its header {dims} says; the file is corrupt: replace it."
        )
    return header + payload


def cache_dir() -> Path:
    """Where decoded copies are kept: $FMNIST_CACHE_DIR, else $XDG_CACHE_HOME/fmnist_exp, else ~/.cache/fmnist_exp."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fmnist_exp"


class DecodedCache:
    """Verified, decompressed copies of the IDX files, memory-mapped on later loads.

    An entry is the decompressed IDX file itself, named `<file name without .gz>-<sha256 of the .gz
    bytes>`. Serving one takes two checks, about 0.06 s for the full set on this project's CPU:

    - The key is the sha256 of the compressed file's bytes, read in full on every load, so a changed
      .gz (any byte, whatever its size, mtime or inode) finds no entry. A stat key (path, size,
      mtime_ns, inode) was not enough: file timestamps come from a coarse kernel clock, so a rewrite
      of the same size within one tick, or a copy that keeps the old mtime (cp -p, rsync -t), looks
      unchanged.
    - The entry's own sha256 must equal the expected decompressed checksum, the same table entry
      (CANONICAL_SHA256 or the folder's SHA256SUMS) that verifies the .gz. That proves the mapped
      bytes are the verified content, and finds a corrupt or truncated entry, which is then rebuilt.

    Entries are only written from content that passed that check, under a temporary name renamed
    into place, so a reader sees a whole entry or none; no fsync, since a torn entry after a crash
    fails the second check. Nothing prunes old entries (about 55 MB per version of the data set).
    Any OSError on the cache (an unwritable or full folder) logs one line per load and the load goes
    on from the .gz files.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._warned = False

    def _warn(self, message: str) -> None:
        if not self._warned:
            logger.warning("data cache %s: %s; loading from the .gz files", self.folder, message)
            self._warned = True

    def entry(self, path: Path, compressed: bytes) -> Path:
        name = path.name.removesuffix(".gz")
        return self.folder / f"{name}-{hashlib.sha256(compressed).hexdigest()}"

    def lookup(self, entry: Path, expected_sha256: str) -> mmap.mmap | None:
        """The entry's bytes, memory-mapped, if it holds the expected content; None otherwise."""
        try:
            with open(entry, "rb") as stream:
                mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            return None
        except ValueError:  # An empty file cannot be mapped: a torn entry.
            logger.warning("data cache %s: %s is empty; rebuilding it", self.folder, entry.name)
            return None
        except OSError as error:
            self._warn(f"cannot read {entry.name} ({error})")
            return None
        if hashlib.sha256(mapped).hexdigest() != expected_sha256:
            logger.warning(
                "data cache %s: %s does not hold the verified content; rebuilding it", self.folder, entry.name
            )
            mapped.close()
            return None
        return mapped

    def store(self, entry: Path, content: bytes) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=f".{entry.name}.", delete=False) as partial:
                try:
                    partial.write(content)
                    partial.close()
                    os.replace(partial.name, entry)
                finally:
                    if os.path.exists(partial.name):
                        os.unlink(partial.name)
        except OSError as error:
            self._warn(f"cannot write {entry.name} ({error})")


def _unreadable(path: Path, error: Exception) -> DataError:
    return DataError(f"{path}: not a readable gzip file ({error}). It is probably truncated or corrupt: replace it.")


def _decompressed(
    path: Path, expected_sha256: str | None, cache: DecodedCache | None, expected_magic: int | None = None
):
    """The file's decompressed bytes (or a read-only memory map of them), checked against
    `expected_sha256` when one is given; the cache is used only for checked content."""
    if expected_sha256 is None or cache is None:
        try:
            with gzip.open(path, "rb") as stream:
                raw = read_bounded(stream, path, expected_magic)
        except (OSError, EOFError, zlib.error) as error:
            raise _unreadable(path, error) from error
        if expected_sha256 is not None:
            _check_sha256(path, hashlib.sha256(raw).hexdigest(), expected_sha256)
        return raw
    try:
        compressed = path.read_bytes()
    except OSError as error:
        raise _unreadable(path, error) from error
    entry = cache.entry(path, compressed)
    mapped = cache.lookup(entry, expected_sha256)
    if mapped is not None:
        return mapped
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
            raw = read_bounded(stream, path, expected_magic)
    except (OSError, EOFError, zlib.error) as error:
        raise _unreadable(path, error) from error
    _check_sha256(path, hashlib.sha256(raw).hexdigest(), expected_sha256)
    cache.store(entry, raw)
    return raw


def read_idx(
    path: Path, expected_magic: int, expected_sha256: str | None = None, cache: DecodedCache | None = None
) -> np.ndarray:
    """Parse one gzipped IDX file (big-endian header, then uint8 payload), checking its content's
    sha256 on the way when one is given, so the file is decompressed once. With a `cache` (and a
    checksum), verified content comes from it when it holds it; the array is then read-only."""
    raw = _decompressed(path, expected_sha256, cache, expected_magic)
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header; replace it.")
    (magic,) = struct.unpack(">i", raw[:4])
    if magic != expected_magic:
        raise DataError(
            f"{path}: IDX magic number {magic}, expected {expected_magic} "
            f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'}). Wrong or corrupt file."
        )
    rank = magic & 0xFF
    dims = struct.unpack(f">{rank}i", raw[4 : 4 + 4 * rank])
    payload = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if payload.size != int(np.prod(dims)):
        raise DataError(
            f"{path}: header says {dims} ({int(np.prod(dims)):,} bytes) but holds {payload.size:,}. "
            "The file is truncated or corrupt; replace it."
        )
    return payload.reshape(dims)


def read_pair(
    folder: Path,
    images_name: str,
    labels_name: str,
    checksums: dict[str, str] | None = None,
    cache: DecodedCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split; with `checksums` ({file name: sha256}) each file is verified
    (and, with a `cache`, served from it when it holds the verified content)."""
    checksums = checksums or {}
    images = read_idx(folder / images_name, IMAGES_MAGIC, checksums.get(images_name), cache)
    labels = read_idx(folder / labels_name, LABELS_MAGIC, checksums.get(labels_name), cache).astype(np.int64)
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
    cache = DecodedCache(cache_dir()) if config.verify else None
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
