"""IDX files read safely: a bounded gunzip, the header checked, the content's checksum proved, and a
decoded copy kept in a cache folder so that later loads memory-map it instead of decompressing.

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
import tempfile
import zlib
from pathlib import Path

import numpy as np

from fmnist_exp.errors import DataError

CACHE_ENV = "FMNIST_CACHE_DIR"
# The IDX magic numbers of the two kinds of file: unsigned bytes of rank 3 (images) and 1 (labels).
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
logger = logging.getLogger(__name__)


def check_sha256(where, actual: str, expected: str) -> None:
    if actual != expected:
        raise DataError(
            f"{where}: decompressed sha256 is {actual}, expected {expected}. "
            "The file is corrupt or not the Fashion-MNIST release: replace it."
        )


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
            check_sha256(path, hashlib.sha256(raw).hexdigest(), expected_sha256)
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
    check_sha256(path, hashlib.sha256(raw).hexdigest(), expected_sha256)
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
