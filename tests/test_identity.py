"""A config's identity and what a sweep calls swept: one rule each (config/identity.py, Hydra's parser)."""

from __future__ import annotations

import json

import pytest

from fmnist_exp.config import identity
from fmnist_exp.config import overrides as grammar
from fmnist_exp.sweeps import comparison, sweep
from helpers import typed_config

pytestmark = pytest.mark.unit  # no training, no subprocess: the inner loop (pytest -m unit)

LAYERS = "[{type:conv2d,filters:8,kernel_size:3},{type:flatten},{type:dense,units:10,activation:softmax}]"


def test_a_fixed_layer_list_is_not_a_swept_key():
    params = {"model.layers": LAYERS, "batch_size": "32,64", "sweeper": "basic", "launcher": "basic"}
    assert comparison.swept(params) == {"batch_size": "32,64"}
    assert comparison.swept_keys({**params, "model": "seed_cnn,fast_cnn"}) == ["batch_size", "model.name"]


def test_a_fixed_layer_list_stays_out_of_the_job_names():
    parent_tags = {"sweep_overrides_json": json.dumps([f"model.layers={LAYERS}", "seed=1,2"])}
    assert sweep.child_name([f"model.layers={LAYERS}", "seed=2"], parent_tags) == "seed=2"


def test_the_sweep_and_the_command_line_agree_on_what_sweeps():
    for override in ("a=1,2", "a=range(1,4)", "a=choice(x,y)", "a=interval(0.1,0.5)", "a=[1,2]", "a=1", LAYERS):
        assert comparison.swept({"a": grammar.value(override)}) == (
            {"a": grammar.value(override)} if grammar.is_sweep(override) else {}
        ), override


def test_the_config_hash_ignores_tracking_keys_and_the_seed_only_when_asked():
    config = typed_config()
    renamed = typed_config(["mlflow.experiment_name=other", "trainer.verbose=0"])
    reseeded = typed_config(["seed=7"])
    assert identity.config_hash(config) == identity.config_hash(renamed)
    assert identity.config_hash(config) != identity.config_hash(reseeded)
    assert identity.config_hash(config, without=("seed",)) == identity.config_hash(reseeded, without=("seed",))


def test_run_names_put_the_preset_first_and_leave_untrained_keys_out():
    assert identity.run_name(["batch_size=64", "experiment=fast", "mlflow.experiment_name=x"]) == (
        "experiment=fast,batch_size=64"
    )
    assert identity.run_name(["force=true"]) == "default"
