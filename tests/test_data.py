"""Data loading from real IDX files: discovery, checksums, corrupt files, splits, download, the cache."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmnist_exp.config.schema import DataConfig
from fmnist_exp.data import fashion_mnist as data
from fmnist_exp.data import idx
from helpers import (
    FULL_DATA_DIR,
    PROCESS_TIMEOUT,
    SMALL_RUN,
    SUBSET_DIR,
    assert_refused,
    copy_dataset,
    free_port,
    run_command,
    stop_process_group,
    wait_for_http,
    write_idx,
)


@pytest.fixture(autouse=True)
def cache_folder(tmp_path: Path, monkeypatch) -> Path:
    """Every load in this module caches into its own temporary folder, never the user's home."""
    folder = tmp_path / "decoded-cache"
    monkeypatch.setenv(idx.CACHE_ENV, str(folder))
    return folder


def test_subset_loads_as_uint8_with_a_stratified_holdout():
    splits = data.load(DataConfig(dir=str(SUBSET_DIR)), seed=0)
    train_images, train_labels = splits.train
    validation_images, validation_labels = splits.validation
    assert train_images.dtype == np.uint8 and train_images.shape[1:] == (28, 28, 1)
    assert len(train_images) + len(validation_images) == 4000
    assert len(validation_images) == pytest.approx(400, abs=10)
    # Every class is held out in proportion.
    counts = np.bincount(validation_labels, minlength=10) / np.bincount(train_labels, minlength=10)
    assert np.all(np.abs(counts - 1 / 9) < 0.02)
    assert splits.test[0].shape == (1000, 28, 28, 1)


def test_validation_schemes():
    article = data.load(DataConfig(dir=str(SUBSET_DIR), validation="test"), seed=0)
    assert article.validation[0] is article.test[0]
    assert len(article.train[0]) == 4000
    assert data.load(DataConfig(dir=str(SUBSET_DIR), validation="none"), seed=0).validation is None


def test_split_depends_on_the_seed_only():
    first = data.load(DataConfig(dir=str(SUBSET_DIR), max_train_samples=500), seed=1)
    second = data.load(DataConfig(dir=str(SUBSET_DIR), max_train_samples=500), seed=1)
    other = data.load(DataConfig(dir=str(SUBSET_DIR), max_train_samples=500), seed=2)
    np.testing.assert_array_equal(first.validation[1], second.validation[1])
    assert not np.array_equal(first.validation[0], other.validation[0])


def test_full_data_is_the_canonical_release(full_data_dir):
    splits = data.load(DataConfig(dir=str(full_data_dir), validation="none"), seed=0)
    assert splits.train[0].shape == (60000, 28, 28, 1)
    assert np.bincount(splits.test[1]).tolist() == [1000] * 10


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(data.DataError, match="data.dir: .*nowhere.* is not a folder"):
        data.locate(str(tmp_path / "nowhere"))


def test_no_copy_anywhere_lists_the_places_looked_at(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # Keras's cache, read from HOME at each call: HOME/.keras/...
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(data.DataError) as caught:
        data.locate(None, download=False)
    message = str(caught.value)
    assert "\n" not in message  # one line
    assert "keras" in message and "debian" in message
    assert "FMNIST_DATA_DIR" in message and "dataset-fashion-mnist" in message


def _private_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    copy_dataset(SUBSET_DIR, copy)
    return copy


def test_checksum_mismatch_is_refused(tmp_path):
    copy = _private_copy(tmp_path)
    images, labels = data.read_pair(copy, data.FILES["test_images"], data.FILES["test_labels"])
    flipped = images[..., 0].copy()
    flipped[0, 0, 0] ^= 0xFF
    write_idx(copy / data.FILES["test_images"], flipped, idx.IMAGES_MAGIC)
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz: decompressed sha256 is"):
        data.load(DataConfig(dir=str(copy)), seed=0)


def test_truncated_gzip_is_refused(tmp_path):
    copy = _private_copy(tmp_path)
    path = copy / data.FILES["train_images"]
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(data.DataError, match="truncated or corrupt"):
        data.load(DataConfig(dir=str(copy)), seed=0)
    with pytest.raises(data.DataError, match="not a readable gzip file"):
        data.load(DataConfig(dir=str(copy), verify=False), seed=0)


def test_wrong_magic_number_is_refused(tmp_path):
    copy = _private_copy(tmp_path)
    labels = idx.read_idx(copy / data.FILES["test_labels"], idx.LABELS_MAGIC)
    write_idx(copy / data.FILES["test_labels"], labels, idx.IMAGES_MAGIC)
    with pytest.raises(data.DataError, match="IDX magic number 2051, expected 2049"):
        data.load(DataConfig(dir=str(copy), verify=False), seed=0)


def test_image_and_label_counts_must_match(tmp_path):
    copy = _private_copy(tmp_path)
    labels = idx.read_idx(copy / data.FILES["test_labels"], idx.LABELS_MAGIC)
    write_idx(copy / data.FILES["test_labels"], labels[:-1], idx.LABELS_MAGIC)
    with pytest.raises(data.DataError, match="1,000 images but t10k-labels-idx1-ubyte.gz 999 labels"):
        data.load(DataConfig(dir=str(copy), verify=False), seed=0)


def test_recompressed_files_pass_the_decompressed_checksum(tmp_path):
    # Debian re-compresses the files: different .gz bytes, same content, must pass.
    copy = _private_copy(tmp_path)
    path = copy / data.FILES["test_labels"]
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(content, compresslevel=1, mtime=0))
    data.load(DataConfig(dir=str(copy)), seed=0)  # verify=true by default: raises on a mismatch


def test_download_fetches_verifies_and_renames(tmp_path, monkeypatch):
    # A file:// mirror exercises the real download path with no network.
    mirror = tmp_path / "mirror"
    copy_dataset(SUBSET_DIR, mirror)
    monkeypatch.setattr(data, "CANONICAL_SHA256", data.expected_checksums(SUBSET_DIR))
    target = data.fetch(tmp_path / "cache", mirror=mirror.as_uri())
    assert sorted(p.name for p in target.iterdir()) == sorted(data.FILES.values())


def test_download_of_a_corrupt_file_leaves_nothing_behind(tmp_path):
    mirror = tmp_path / "mirror"
    copy_dataset(SUBSET_DIR, mirror)  # the subset's checksums are not the canonical ones
    with pytest.raises(data.DataError, match="decompressed sha256"):
        data.fetch(tmp_path / "cache", mirror=mirror.as_uri())
    assert not (tmp_path / "cache").exists()  # the folder it made, removed again: nothing of it is left


# The decoded cache: a second load maps verified copies instead of decompressing.


def _forbid_decompression(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a .gz file was decompressed; the cache should have served it")

    monkeypatch.setattr(idx.gzip, "decompress", refuse)
    monkeypatch.setattr(idx.gzip, "open", refuse)


def _arrays(splits: data.Splits) -> list[np.ndarray]:
    return [*splits.train, *splits.test]


def test_a_second_load_is_served_from_the_cache(tmp_path, cache_folder, monkeypatch):
    copy = _private_copy(tmp_path)
    config = DataConfig(dir=str(copy), validation="none")
    first = data.load(config, seed=0)
    entries = sorted(path.name.rsplit("-", 1)[0] for path in cache_folder.iterdir())
    assert entries == sorted(name.removesuffix(".gz") for name in data.FILES.values())
    _forbid_decompression(monkeypatch)
    second = data.load(config, seed=0)
    for before, after in zip(_arrays(first), _arrays(second), strict=True):
        np.testing.assert_array_equal(before, after)
        assert before.dtype == after.dtype
    # Served images are read-only views of the mapped entry, not copies.
    assert not second.train[0].flags.writeable


def test_a_changed_file_is_never_served_from_the_cache(tmp_path, cache_folder):
    copy = _private_copy(tmp_path)
    config = DataConfig(dir=str(copy))
    data.load(config, seed=0)
    path = copy / data.FILES["test_images"]
    before = path.stat()
    images = idx.read_idx(path, idx.IMAGES_MAGIC)[..., np.newaxis]
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 0xFF
    write_idx(path, changed[..., 0], idx.IMAGES_MAGIC)
    # Same name, and the old mtime: only the content tells the files apart.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz: decompressed sha256 is"):
        data.load(config, seed=0)
    # Declared as a new version in the manifest, the changed file loads, and it is the new content.
    manifest = (copy / data.MANIFEST_NAME).read_text()
    new_digest = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    old_digest = data.expected_checksums(copy)[path.name]
    (copy / data.MANIFEST_NAME).write_text(manifest.replace(old_digest, new_digest))
    reloaded = data.load(config, seed=0)
    np.testing.assert_array_equal(reloaded.test[0], changed)
    assert not np.array_equal(reloaded.test[0], images)


@pytest.mark.parametrize("damage", ["flip_a_byte", "truncate", "empty"])
def test_a_corrupt_cache_entry_is_detected_and_rebuilt(tmp_path, cache_folder, damage, caplog):
    copy = _private_copy(tmp_path)
    config = DataConfig(dir=str(copy), validation="none")
    expected = data.load(config, seed=0)
    (entry,) = cache_folder.glob("train-images-idx3-ubyte-*")
    content = bytearray(entry.read_bytes())
    if damage == "flip_a_byte":
        content[len(content) // 2] ^= 0x01
    elif damage == "truncate":
        del content[len(content) // 2 :]
    else:
        content.clear()
    entry.write_bytes(bytes(content))
    with caplog.at_level(logging.WARNING, logger="fmnist_exp.data"):
        reloaded = data.load(config, seed=0)
    np.testing.assert_array_equal(reloaded.train[0], expected.train[0])
    assert "rebuilding" in caplog.text
    expected_digest = data.expected_checksums(copy)[data.FILES["train_images"]]
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == expected_digest


def test_an_unwritable_cache_folder_costs_one_log_line_not_the_load(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # A folder under a regular file cannot be created, even by root.
    monkeypatch.setenv(idx.CACHE_ENV, str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="fmnist_exp.data"):
        splits = data.load(DataConfig(dir=str(SUBSET_DIR)), seed=0)
    assert len(splits.train[0]) + len(splits.validation[0]) == 4000
    warnings = [record for record in caplog.records if record.name.startswith("fmnist_exp.data")]
    assert len(warnings) == 1 and "loading from the .gz files" in warnings[0].getMessage()


def test_an_unverified_load_neither_reads_nor_writes_the_cache(tmp_path, cache_folder):
    data.load(DataConfig(dir=str(SUBSET_DIR), verify=False), seed=0)
    assert not cache_folder.exists()


def test_the_cache_folder_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(idx.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert idx.cache_dir() == tmp_path / "fmnist_exp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert idx.cache_dir() == Path.home() / ".cache" / "fmnist_exp"


# Download by default: the README's first command works on a machine with no local copy.

NO_LOCAL_COPY = pytest.mark.skipif(data.DEBIAN_DIR.exists(), reason="Debian's copy is installed: nothing to download")


def _runner_without_data(home: Path) -> dict[str, str]:
    """The environment of a user with no copy: a fresh home (so an empty Keras cache) and FMNIST_DATA_DIR
    empty (the helpers lay these over the test's own environment, so it is emptied, not left out)."""
    return {**os.environ, "FMNIST_DATA_DIR": "", "HOME": str(home)}


@pytest.mark.slow
@NO_LOCAL_COPY
@pytest.mark.skipif(not FULL_DATA_DIR, reason="serving the canonical files needs FMNIST_DATA_DIR")
def test_a_run_with_no_local_copy_downloads_it_from_the_mirror(tmp_path, tracking_uri):
    # A real HTTP server on loopback stands in for the internet mirror, serving the canonical files.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", FULL_DATA_DIR],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", server)
        arguments = ["data.max_train_samples=500", "data.max_test_samples=200", "epochs=1", "batch_size=100",
                     "trainer.verbose=0", f"data.mirror=http://127.0.0.1:{port}/", f"hydra.run.dir={tmp_path}/out"]  # fmt: skip
        with subprocess.Popen([sys.executable, "-m", "fmnist_exp.run", *arguments], cwd=tmp_path, text=True,
                              env={**_runner_without_data(tmp_path / "home"), "MLFLOW_TRACKING_URI": tracking_uri},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:  # fmt: skip
            stdout, stderr = run.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        stop_process_group(server)
    assert run.returncode == 0, stderr[-3000:]
    cache = tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist"
    assert sorted(path.name for path in cache.iterdir()) == sorted(data.FILES.values())  # no partial files left
    for name in data.FILES.values():
        assert (cache / name).read_bytes() == (Path(FULL_DATA_DIR) / name).read_bytes()
    assert f"downloaded {data.FILES['train_images']}" in stderr
    assert "test_accuracy=" in stdout + stderr


@NO_LOCAL_COPY
def test_offline_with_no_local_copy_is_one_line_and_leaves_no_folder(tmp_path, tracking_uri):
    port = free_port()  # nothing listens there: the connection is refused, as offline
    home = tmp_path / "home"
    home.mkdir()
    result = run_command(
        "fmnist_exp.run",
        [*SMALL_RUN[1:], f"data.mirror=http://127.0.0.1:{port}/", f"hydra.run.dir={tmp_path}/out"],
        tmp_path,
        {**_runner_without_data(home), "PYTHONPROFILEIMPORTTIME": "1", "MLFLOW_TRACKING_URI": tracking_uri},
    )
    line = assert_refused(result, f"data.mirror: Fashion-MNIST is not in {home}/.keras/datasets/fashion-mnist")
    assert f"http://127.0.0.1:{port}/train-images-idx3-ubyte.gz" in line and "FMNIST_DATA_DIR" in line
    assert not (home / ".keras").exists() and not (tmp_path / "out").exists()


@NO_LOCAL_COPY
def test_strictly_offline_never_tries_the_mirror(tmp_path, tracking_uri):
    home = tmp_path / "home"
    home.mkdir()
    result = run_command(
        "fmnist_exp.run",
        [*SMALL_RUN[1:], "data.download=false", "data.mirror=http://127.0.0.1:1/", f"hydra.run.dir={tmp_path}/out"],
        tmp_path,
        {**_runner_without_data(home), "PYTHONPROFILEIMPORTTIME": "1", "MLFLOW_TRACKING_URI": tracking_uri},
    )
    line = assert_refused(result, "data: Fashion-MNIST is not in")
    assert "data.download=false" in line and "127.0.0.1:1" not in line
    assert not (home / ".keras").exists()
