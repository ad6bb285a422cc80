"""The command line as a user runs it: a subprocess with a real store.

BAD_INPUTS is the one table of bad input, for every command, with one runner: each case must exit 2
with one line naming the key or file, no traceback, no MLflow run, no output folder left behind, no
code run from a config or a model folder, and (for the runner) before TensorFlow or Keras is imported.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fmnist_exp.data import fashion_mnist as data
from fmnist_exp.data import idx
from helpers import (
    SMALL_RUN,
    SUBSET_DIR,
    all_runs,
    assert_refused,
    copy_dataset,
    free_port,
    hostile_saved_model,
    png_claiming_size,
    run_cli,
    run_command,
    write_idx,
)

RUN, EVALUATE, PREDICT = "fmnist_exp.run", "fmnist_exp.evaluate", "fmnist_exp.predict"
CLOSED_PORT = free_port()  # a port of this machine nothing listens on (the Ray launcher's address check)


def test_a_small_run_end_to_end(tmp_path, tracking_uri):
    """As a user runs it, in a new interpreter: the one default test that trains through the runner's
    own TensorFlow import (the other commands are forked from a zygote that imported it)."""
    from fmnist_exp.runtime import noise

    result = run_cli(SMALL_RUN, tracking_uri, tmp_path, kind="new")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(noise.STARTUP_NOISE.search(line) for line in result.stderr.splitlines()), result.stderr[-3000:]
    assert "test_accuracy=" in result.stdout and "python -m fmnist_exp.ui" in result.stdout
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FINISHED"
    assert run.info.run_id in result.stdout
    assert (tmp_path / "out" / "learning_curves.png").is_file()


def test_help_lists_the_groups(tmp_path, tracking_uri):
    result = run_cli(["--help"], tracking_uri, tmp_path)
    assert result.returncode == 0
    groups = dict(
        line.split(": ", 1)
        for line in result.stdout.splitlines()
        if line.split(": ")[0] in ("model", "optimizer", "experiment")
    )
    assert {"seed_cnn", "modern_cnn", "fast_cnn", "wide_cnn"} <= set(groups["model"].split(", "))
    assert groups["optimizer"] == "adam, adamw, rmsprop, sgd"
    assert set(groups["experiment"].split(", ")) == {"article", "fast", "speedrun", "strong", "best"}
    assert "python -m fmnist_exp.run -m key=a,b" in result.stdout


# -- files the cases need, made in the test's own folder ------------------------------------------------


def data_copy(tmp: Path) -> Path:
    copy = tmp / "data"
    copy_dataset(SUBSET_DIR, copy)
    return copy


def damaged_copy(how: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        copy = data_copy(tmp)
        (copy / data.MANIFEST_NAME).unlink()  # so that reading, not the checksum, meets the damage
        if how == "truncated":
            path = copy / data.FILES["train_images"]
            path.write_bytes(path.read_bytes()[:4000])
        elif how == "magic":
            labels = idx.read_idx(copy / data.FILES["test_labels"], idx.LABELS_MAGIC)
            write_idx(copy / data.FILES["test_labels"], labels, 2052)
        elif how == "counts":
            labels = idx.read_idx(copy / data.FILES["train_labels"], idx.LABELS_MAGIC)
            write_idx(copy / data.FILES["train_labels"], labels[:100], idx.LABELS_MAGIC)

    return make


def one_file_missing(tmp: Path) -> None:
    """data.dir lacks one file, while a complete copy sits where the runner looks by default (the
    Keras cache under HOME): it must not silently train on that one."""
    (data_copy(tmp) / data.FILES["test_labels"]).unlink()
    copy_dataset(SUBSET_DIR, tmp / "home" / ".keras" / "datasets" / "fashion-mnist")


def manifest(content: bytes, append: bool) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        path = data_copy(tmp) / data.MANIFEST_NAME
        path.write_bytes((path.read_bytes() if append else b"") + content)

    return make


def text_file_store(tmp: Path) -> None:
    (tmp / "store.db").write_text("not a database\n")


def corrupt_sqlite_store(tmp: Path) -> None:
    (tmp / "store.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 32)


def a_file_in_the_way(tmp: Path) -> None:
    (tmp / "a_file").write_text("")


def callback_preset(tmp: Path) -> None:
    """A preset, given with --config-dir, whose hydra.callbacks names shutil.copyfile."""
    (tmp / "conf" / "experiment").mkdir(parents=True)
    (tmp / "conf" / "experiment" / "copier.yaml").write_text(
        "# @package _global_\n"
        "hydra:\n"
        "  callbacks:\n"
        "    copier:\n"
        "      _target_: shutil.copyfile\n"
        f"      src: {SUBSET_DIR / data.MANIFEST_NAME}\n"
        f"      dst: {tmp / 'pwned'}\n"
    )


def model_with_duplicate_key(tmp: Path) -> None:
    (tmp / "conf" / "model").mkdir(parents=True)
    (tmp / "conf" / "model" / "twice.yaml").write_text(
        "name: twice\n"
        "layers:\n"
        "  - {type: conv2d, filters: 8, filters: 16, kernel_size: 3}\n"
        "  - {type: flatten}\n"
        "  - {type: dense, units: 10, activation: softmax}\n"
    )


def hostile_model(tmp: Path) -> None:
    hostile_saved_model(tmp / "model", marker=tmp / "pwned")
    an_image(tmp)


def not_keras_model(tmp: Path) -> None:
    (tmp / "model").mkdir()
    (tmp / "model" / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: os\n")
    an_image(tmp)


def escaping_model(tmp: Path) -> None:
    """A Keras flavour whose data path leads out of the model folder."""
    (tmp / "model").mkdir()
    (tmp / "outside").mkdir()
    (tmp / "outside" / "model.keras").write_bytes(b"PK")
    (tmp / "model" / "MLmodel").write_text("flavors:\n  keras:\n    data: ../outside\n")
    an_image(tmp)


def an_image(tmp: Path) -> None:
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp / "image.png")


def giant_image(tmp: Path) -> None:
    png_claiming_size(tmp / "giant.png", 20000, 20000)
    (tmp / "model").mkdir()


@dataclasses.dataclass(frozen=True)
class Bad:
    """One bad input: the arguments ("{tmp}" is the test's folder), the text the one line must hold."""

    id: str
    arguments: tuple[str, ...]
    message: str
    command: str = RUN
    setup: Callable[[Path], None] | None = None
    small_run: bool = True  # the runner's arguments follow SMALL_RUN's
    env: tuple[tuple[str, str], ...] = ()
    before_keras: bool = True  # refused before TensorFlow or Keras is imported


POOLS = (
    "["
    + ",".join(["{type:max_pooling2d,pool_size:2}"] * 5)
    + ",{type:flatten},{type:dense,units:10,activation:softmax}]"
)
TWICE = "[{type:conv2d,filters:8,filters:16,kernel_size:3},{type:flatten},{type:dense,units:10,activation:softmax}]"
CALLBACK = f"+hydra.callbacks.copier={{_target_:shutil.copyfile,src:{SUBSET_DIR}/SHA256SUMS,dst:{{tmp}}/pwned}}"
BROKEN_STORES = [
    ("unreachable server", "http://127.0.0.1:9", "mlflow.tracking_uri: cannot reach the tracking server", None),
    ("text file", "sqlite:///{tmp}/store.db", "mlflow.tracking_uri: sqlite:///", text_file_store),
    ("corrupt sqlite", "sqlite:///{tmp}/store.db", "mlflow.tracking_uri: sqlite:///", corrupt_sqlite_store),
    ("unknown scheme", "foo://x", "mlflow.tracking_uri: foo://x is not an MLflow store URI", None),
    ("unreachable database", "postgresql://127.0.0.1:9/x", "mlflow.tracking_uri: cannot reach the postgresql", None),
]

BAD_INPUTS = [
    # Values the schema's types refuse (Hydra, at compose time) or validate() refuses.
    Bad("batch_size zero", ("batch_size=0",), "batch_size: 0 must be a positive number"),
    Bad("batch_size negative", ("batch_size=-1",), "batch_size: -1 must be a positive number"),
    Bad("batch_size text", ("batch_size=abc",), "batch_size: Value 'abc'"),
    Bad("batch_size huge", ("batch_size=1000000000",), "batch_size: 1000000000 is larger than 65536"),
    Bad("epochs negative", ("epochs=-1",), "epochs: -1 must be a positive number"),
    Bad("epochs float", ("epochs=1.5",), "epochs: Value '1.5'"),
    Bad("seed negative", ("seed=-3",), "seed: -3 must lie in [0, 2**32 - 1]"),
    Bad("seed above 2**32-1", ("seed=4294967296",), "seed: 4294967296 must lie in [0, 2**32 - 1]"),
    Bad("optimizer unknown", ("optimizer=adagrad",), "Could not find 'optimizer/adagrad'"),
    Bad("learning_rate negative", ("optimizer.learning_rate=-0.01",), "optimizer.learning_rate: -0.01 must be"),
    Bad("learning_rate text", ("optimizer.learning_rate=fast",), "optimizer.learning_rate: Value 'fast'"),
    Bad("momentum for adam", ("optimizer.momentum=0.9",), "optimizer.momentum: adam takes no momentum"),
    Bad("schedule unknown", ("optimizer.schedule.name=linear",), "optimizer.schedule.name: 'linear' is not one of"),
    Bad("warm-up too long", ("optimizer.schedule.warmup_epochs=1",), "optimizer.schedule.warmup_epochs: 1.0 must lie"),
    Bad("top-level typo", ("learning_rate=0.1",), "learning_rate"),
    Bad("data key typo", ("data.directory=/x",), "data.directory: Key 'directory' not in 'DataConfig'"),
    Bad("data.shuffle_buffer removed", ("data.shuffle_buffer=100",), "data.shuffle_buffer: Key 'shuffle_buffer'"),
    Bad("model unknown", ("model=resnet",), "Could not find 'model/resnet'"),
    Bad("layer type", ("model.layers.0.type=conv3d",), "model.layers[0].type: 'conv3d' is not a known layer type"),
    Bad("layer type code", ("model.layers.0.type=os.system",), "model.layers[0].type: 'os.system' is not a known"),
    Bad("filters zero", ("model.layers.0.filters=0",), "model.layers[0].filters: 0 must be an integer of at least 1"),
    Bad(
        "kernel too big",
        ("model.layers.4.kernel_size=13",),
        "model.layers[4].kernel_size: 13 does not fit the 12x12x64",
    ),
    Bad("pooling to nothing", (f"model.layers={POOLS}",), "model.layers[4].pool_size: 2 does not fit the 1x1x1"),
    Bad("dropout rate", ("model.layers.8.rate=1.5",), "model.layers[8].rate: 1.5 must be a number in [0, 1)"),
    # A knob's bad value is named by the knob, the key the user typed; the layer it reached comes second.
    Bad(
        "dense_units knob zero",
        ("model.dense_units=0",),
        "model.dense_units: 0 must be an integer of at least 1 (in model.layers[7].units)",
    ),
    Bad(
        "width knob zero",
        ("model=wide_cnn", "model.width=0"),
        "model.width: 0 must be an integer of at least 1 (in model.layers[0].filters)",
    ),
    Bad(
        "dropout knob",
        ("model.dropout=1.5",),
        "model.dropout: 1.5 must be a number in [0, 1) (in model.layers[8].rate)",
    ),
    Bad(
        "last layer units",
        ("model.layers.9.units=9",),
        "model.layers[9]: the last layer must be {type: dense, units: 10",
    ),
    Bad("no classifier", ("model.layers=[{type:flatten}]",), "model.layers[0]: the last layer must be"),
    Bad("key twice on the command line", (f"model.layers={TWICE}",), "model.layers: the key 'filters' is given twice"),
    Bad(
        "key twice in a model file",
        ("--config-dir", "{tmp}/conf", "model=twice"),
        "twice.yaml, line 3: found duplicate key",
        setup=model_with_duplicate_key,
    ),
    Bad("precision", ("trainer.precision=float8",), "trainer.precision: 'float8' is not one of float32"),
    # Data.
    Bad("max_train_samples zero", ("data.max_train_samples=0",), "data.max_train_samples: 0 must be a positive"),
    Bad("validation scheme", ("data.validation=cross",), "data.validation: 'cross' is not one of holdout, test"),
    Bad("validation_fraction above 1", ("data.validation_fraction=1.5",), "data.validation_fraction: 1.5 must lie"),
    Bad(
        "validation split empty",
        ("data.validation_fraction=0.001",),
        "data.validation_fraction: leaves 0 images covering 0 of the 10 classes",
    ),
    Bad(
        "training split empty",
        ("data.validation_fraction=0.999",),
        "data.validation_fraction (with data.max_train_samples): leaves 0 images",
    ),
    Bad("data.dir missing", ("data.dir=/nonexistent/fashion",), "data.dir: '/nonexistent/fashion' is not a folder"),
    Bad(
        "data.dir lacks a file",
        ("data.dir={tmp}/data",),
        "data.dir: {tmp}/data lacks t10k-labels-idx1-ubyte.gz",
        setup=one_file_missing,
        env=(("HOME", "{tmp}/home"),),
    ),
    Bad(
        "gzip truncated",
        ("data.dir={tmp}/data", "data.verify=false"),
        "train-images-idx3-ubyte.gz: not a readable gzip file",
        setup=damaged_copy("truncated"),
    ),
    Bad(
        "IDX magic",
        ("data.dir={tmp}/data", "data.verify=false"),
        "t10k-labels-idx1-ubyte.gz: IDX magic number 2052, expected 2049",
        setup=damaged_copy("magic"),
    ),
    Bad(
        "IDX counts",
        ("data.dir={tmp}/data", "data.verify=false"),
        "4,000 images but train-labels-idx1-ubyte.gz 100 labels",
        setup=damaged_copy("counts"),
    ),
    Bad(
        "SHA256SUMS malformed line",
        ("data.dir={tmp}/data",),
        "SHA256SUMS: line 5 is not '<sha256>  <file name>'",
        setup=manifest(b"not-a-checksum\n", append=True),
    ),
    Bad(
        "SHA256SUMS binary",
        ("data.dir={tmp}/data",),
        "SHA256SUMS: not a text file",
        setup=manifest(bytes(range(256)), append=False),
    ),
    # The store, for a run and for a sweep.
    *[
        Bad(f"store {name}", (f"mlflow.tracking_uri={uri}",), message, setup=setup)
        for name, uri, message, setup in BROKEN_STORES
    ],
    *[
        Bad(f"sweep store {name}", ("-m", f"mlflow.tracking_uri={uri}"), message, setup=setup)
        for name, uri, message, setup in BROKEN_STORES
    ],
    # What a whole sweep shares, checked before its parent run is made or any orphan is closed.
    Bad("sweep replicates 0", ("-m", "replicates=0"), "replicates: 0 must be a whole number from 1 to 100"),
    Bad("sweep replicates -1", ("-m", "replicates=-1"), "replicates: -1 must be a whole number from 1 to 100"),
    Bad("sweep replicates huge", ("-m", "replicates=100000"), "replicates: 100000 must be a whole number from 1"),
    Bad("sweep replicates swept", ("-m", "replicates=1,2"), "replicates: cannot be swept"),
    Bad("plan without a sweep", ("plan=true",), "plan: true plans a sweep (its jobs, time and the difference"),
    Bad("sweep plan swept", ("-m", "plan=true,false"), "plan: cannot be swept: it says whether the whole sweep runs"),
    Bad(
        "sweep plan difference 0",
        ("-m", "plan=true", "plan_difference=0"),
        "plan_difference: 0.0 must lie between 0 and 1, in the objective's units",
    ),
    Bad(
        "sweep replicates unresolved",
        ("-m", "replicates=${oc.env:FMNIST_NO_SUCH_VARIABLE}"),
        "replicates: KeyError raised while resolving interpolation",
    ),
    # replicates=auto (a race of the grid's configs) and its race.* keys, checked before the sweep starts.
    Bad("race without a sweep", ("replicates=auto",), "replicates: auto races the configs of a sweep, adding seeds"),
    Bad(
        "race in an Optuna search",
        ("-m", "hparams_search=optuna", "replicates=auto"),
        "replicates: auto races the configs of a grid sweep (-m key=a,b,c); an Optuna search",
    ),
    Bad(
        "race with the basic sweeper",
        ("-m", "hydra/sweeper=basic", "replicates=auto"),
        "replicates: auto needs the grid sweeper (hparams_search=grid, the default), not hydra/sweeper=basic",
    ),
    Bad("race over swept seeds", ("-m", "seed=1,2", "replicates=auto"), "seed: cannot be swept with replicates=auto"),
    Bad(
        "race seed offset given",
        ("-m", "replicates=auto", "race.seed_offset=2"),
        "race.seed_offset: 2: the grid sweeper sets it for a race's later rounds; leave it out",
    ),
    Bad(
        "race seed offset, one run",
        ("race.seed_offset=-7", "dry_run=true"),
        "race.seed_offset: -7: the grid sweeper sets it for a race's later rounds; leave it out",
    ),
    Bad(
        "race seed offset, no race",
        ("-m", "replicates=3", "race.seed_offset=2", "plan=true"),
        "race.seed_offset: 2: the grid sweeper sets it for a race's later rounds; leave it out",
    ),
    Bad(
        "race over an untrained key",
        ("-m", "replicates=auto", "trainer.verbose=0,1"),
        "trainer.verbose: cannot be swept with replicates=auto: it does not change what is trained",
    ),
    Bad("replicates a word", ("-m", "replicates=many"), "replicates: 'many' must be a whole number from 1 to 100"),
    Bad("replicates a fraction", ("-m", "replicates=2.5"), "replicates: 2.5 must be a whole number from 1 to 100"),
    Bad("replicates a fraction, one run", ("replicates=2.5",), "replicates: 2.5 must be a whole number from 1 to 100"),
    *[
        Bad(f"race {key}={value}", ("-m", "replicates=auto", f"race.{key}={value}"), message)
        for key, value, message in [
            ("min_seeds", "1", "race.min_seeds: 1 must lie from 2 (a test needs two seeds) to 100"),
            ("min_seeds", "two", "race.min_seeds: Value 'two' of type 'str' could not be converted to Integer"),
            ("max_seeds", "1", "race.max_seeds: 1 must lie from race.min_seeds (2) to 100"),
            ("max_seeds", "101", "race.max_seeds: 101 must lie from race.min_seeds (2) to 100"),
            ("seeds_per_round", "0", "race.seeds_per_round: 0 must be 1 or more"),
            ("max_seeds", "3,4", "race.max_seeds: cannot be swept: the race's rules are one for the whole sweep"),
        ]
    ],
    Bad(
        "sweep orphan bound negative",
        ("-m", "mlflow.orphan_after_minutes=-1"),
        "mlflow.orphan_after_minutes: -1.0 must be 5 or more: live runs write a heartbeat every minute",
    ),
    Bad(
        "sweep store swept",
        ("-m", "mlflow.tracking_uri=sqlite:///{tmp}/a.db,sqlite:///{tmp}/b.db"),
        "mlflow.tracking_uri: cannot be swept: a sweep's parent run and its jobs share one store",
    ),
    Bad(
        "sweep experiment swept",
        ("-m", "mlflow.experiment_name=one,two"),
        "mlflow.experiment_name: cannot be swept: a sweep's parent run and its jobs share one experiment",
    ),
    # The study sweeper's heartbeat, checked before the sweep starts.
    Bad(
        "search heartbeat 0",
        ("-m", "hparams_search=optuna", "hydra.sweeper.heartbeat_interval=0"),
        "hydra.sweeper.heartbeat_interval: 0 must be a whole number of seconds, 1 or more",
    ),
    Bad(
        "search grace shorter than two beats",
        ("-m", "hparams_search=optuna", "hydra.sweeper.grace_period=90"),
        "hydra.sweeper.grace_period: 90 must be at least twice hydra.sweeper.heartbeat_interval (60)",
    ),
    # Launcher settings, checked by the launcher's module before the sweep starts.
    *[
        Bad(f"gpu_pack {key}={value}", ("-m", "hydra/launcher=gpu_pack", f"hydra.launcher.{key}={value}"), message)
        for key, value, message in [
            ("job_memory_mb", "0", "hydra.launcher.job_memory_mb: 0 must be a whole number of MiB above 0"),
            ("job_memory_mb", "-512", "hydra.launcher.job_memory_mb: -512 must be a whole number of MiB above 0"),
            ("job_memory_mb", "lots", "hydra.launcher.job_memory_mb: 'lots' must be a whole number of MiB"),
            ("gpu_memory_mb", "0", "hydra.launcher.gpu_memory_mb: 0 must be a whole number of MiB above 0"),
            ("gpu_memory_mb", "-8000", "hydra.launcher.gpu_memory_mb: -8000 must be a whole number of MiB"),
            ("n_jobs", "-4", "hydra.launcher.n_jobs: -4 must be a whole number: 0 (as many as the GPU holds)"),
            ("n_jobs", "two", "hydra.launcher.n_jobs: 'two' must be a whole number"),
            ("other_jobs", "-1", "hydra.launcher.other_jobs: -1 must be a whole number, 0 or more"),
        ]
    ],
    Bad(
        "joblib n_jobs 0",
        ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"),
        "hydra.launcher.n_jobs: 0 must be a whole number other than 0",
    ),
    *[
        Bad(
            f"ray address {address}",
            ("-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={address}"),
            f"hydra.launcher.ray.init.address: '{address}' is not a Ray address; give host:port",
        )
        for address in ("not-an-address", "http://127.0.0.1:6379", "127.0.0.1:99999", "ray://:10001")
    ],  # fmt: skip
    Bad(
        "ray address unreachable",
        ("-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address=127.0.0.1:{CLOSED_PORT}"),
        f"hydra.launcher.ray.init.address: nothing answers at 127.0.0.1:{CLOSED_PORT} within 3 s",
    ),
    Bad(
        "ray address auto without a cluster",
        ("-m", "hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=auto"),
        "hydra.launcher.ray.init.address: auto found no running Ray cluster",
        env=(("RAY_ADDRESS", ""), ("RAY_TMPDIR", "{tmp}/ray")),
    ),
    # Output folders.
    Bad(
        "run folder under a file",
        ("hydra.run.dir={tmp}/a_file/out/${now:%H}",),
        "hydra.run.dir: cannot create {tmp}/a_file/out/${now:%H}: {tmp}/a_file is a file",
        setup=a_file_in_the_way,
    ),
    Bad(
        "sweep folder under a file",
        ("-m", "hydra.sweep.dir={tmp}/a_file/out/${now:%H}"),
        "hydra.sweep.dir: cannot create {tmp}/a_file/out/${now:%H}: {tmp}/a_file is a file",
        setup=a_file_in_the_way,
    ),
    # A config cannot run code.
    Bad(
        "callback target replaced",
        ("hydra.callbacks.sweep._target_=shutil.rmtree",),
        "hydra.callbacks.sweep._target_: hydra.callbacks cannot be changed",
    ),
    Bad("callback added", (CALLBACK,), "hydra.callbacks.copier: hydra.callbacks cannot be changed"),
    Bad(
        "callback in a preset",
        ("--config-dir", "{tmp}/conf", "experiment=copier"),
        "hydra.callbacks.copier: shutil.copyfile may not be called from a config",
        setup=callback_preset,
    ),
    Bad(
        "callback in a preset, sweep",
        ("-m", "--config-dir", "{tmp}/conf", "experiment=copier"),
        "hydra.callbacks.copier: shutil.copyfile may not be called from a config",
        setup=callback_preset,
    ),
    # resume=.
    Bad(
        "resume with overrides",
        ("resume={tmp}", "batch_size=16", "epochs=5"),
        "resume: batch_size=16 epochs=5 would be ignored",
        small_run=False,
    ),
    Bad("resume unknown run", ("resume=no-such-run",), "run 'no-such-run' is not a run in", small_run=False),
    Bad("resume in a sweep", ("-m", "resume=abc,def"), "resume: continues one run and cannot be swept"),
    # Hydra's modes, two at once (Hydra itself answers with a ValueError traceback).
    Bad("multirun with --cfg", ("-m", "--cfg", "job"), "--cfg and --multirun cannot be given together"),
    Bad("--info with --cfg", ("--info", "--cfg=job"), "--cfg and --info cannot be given together", small_run=False),
    # The small commands.
    Bad("evaluate batch_size", ("model_uri={tmp}/model", "batch_size=-1"), "batch_size: -1 must be", command=EVALUATE),
    Bad(
        "evaluate max_test_samples",
        ("model_uri={tmp}/model", "data.max_test_samples=-5"),
        "data.max_test_samples: -5 must be",
        command=EVALUATE,
    ),
    Bad(
        "evaluate exported SavedModel",
        ("model_uri={tmp}/model", f"data.dir={SUBSET_DIR}"),
        "model_uri: {tmp}/model is an exported SavedModel",
        command=EVALUATE,
        setup=hostile_model,
    ),
    Bad(
        "predict exported SavedModel",
        ("model_uri={tmp}/model", "images={tmp}/image.png"),
        "model_uri: {tmp}/model is an exported SavedModel",
        command=PREDICT,
        setup=hostile_model,
    ),
    Bad(
        "evaluate not a Keras model",
        ("model_uri={tmp}/model", f"data.dir={SUBSET_DIR}"),
        "model_uri: {tmp}/model is not a Keras model",
        command=EVALUATE,
        setup=not_keras_model,
    ),
    Bad(
        "predict data path outside the folder",
        ("model_uri={tmp}/model", "images={tmp}/image.png"),
        "model_uri: {tmp}/model has no data/model.keras file inside it",
        command=PREDICT,
        setup=escaping_model,
    ),
    Bad(
        "predict giant image",
        ("model_uri={tmp}/model", "images={tmp}/giant.png"),
        "images: {tmp}/giant.png is too large",
        command=PREDICT,
        setup=giant_image,
    ),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.id for case in BAD_INPUTS])
def test_bad_input_is_refused_in_one_line(case: Bad, tmp_path, tracking_uri):
    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path))

    if case.setup:
        case.setup(tmp_path)
    arguments = [fill(argument) for argument in case.arguments]
    output = tmp_path / "out"
    if case.command == RUN:
        arguments = [*(SMALL_RUN if case.small_run else []), *arguments]
        folder_key = "hydra.sweep.dir" if "-m" in arguments else "hydra.run.dir"
        if not any(argument.startswith(folder_key) for argument in arguments):
            arguments.append(f"{folder_key}={output}")
    elif not any(argument.startswith("mlflow.tracking_uri=") for argument in arguments):
        arguments.append(f"mlflow.tracking_uri={tracking_uri}")
    environment = {"MLFLOW_TRACKING_URI": tracking_uri}
    environment.update({key: fill(value) for key, value in case.env})

    result = run_command(case.command, arguments, tmp_path, environment, kind="cold")  # a forked process of its own

    assert_refused(result, fill(case.message), case.before_keras)
    assert all_runs(tracking_uri) == []
    assert not output.exists(), sorted(os.listdir(output))
    assert not (tmp_path / "pwned").exists(), "a config or a model folder ran code"


# The runner with a Keras backend missing: the import system answers "not installed" for jax.
WITHOUT_JAX = (
    "import runpy, sys\n"
    "sys.modules['jax'] = None\n"
    "sys.argv = ['fmnist_exp.run', *sys.argv[1:]]\n"
    "runpy.run_module('fmnist_exp.run', run_name='__main__')\n"
)


@pytest.mark.parametrize(
    "refusal, arguments, message",
    [
        ("bad value", ["batch_size=-1"], "batch_size: -1 must be a positive number"),
        ("no data set", ["data.dir={tmp}/nowhere", "data.download=false"], "data.dir: '{tmp}/nowhere' is not a folder"),
        ("no backend", ["trainer.backend=jax", f"data.dir={SUBSET_DIR}"], "trainer.backend: jax is not installed here"),
    ],
)
def test_a_refused_run_leaves_nothing_behind(tmp_path, refusal, arguments, message):
    """In an empty folder, a run refused for its config, its data set or its backend leaves no
    outputs/ folder and no new store (the default store here is ./mlruns/mlflow.db)."""
    import subprocess
    import sys

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_JAX, *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"},
        timeout=300,
    )
    assert_refused(result, message.replace("{tmp}", str(tmp_path)), before_keras=False)
    assert list(cwd.iterdir()) == []
