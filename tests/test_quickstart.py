"""The README's quick start, run the way a newcomer runs it: the commands exactly as printed.

The block between `<!-- quick-start ... -->` and `<!-- /quick-start -->` in README.md is read here
and each command line of it is run by bash, as printed, in an empty working folder. Only the data's
location comes through the environment (FMNIST_DATA_DIR, as a user with a local copy gives it; the
test skips without it, since tests never touch the network) and MLflow writes to a store of its own
(MLFLOW_TRACKING_URI). The `pip install` line cannot run here (it would reach for the network and
change the environment under test): it is checked instead to name an extra of pyproject.toml that
brings the default backend, which must be importable.

`experiment=speedrun` trains on the full data set for about a minute on 2 CPU cores, hence `slow` (CI's
second step).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import stop_process_group

ROOT = Path(__file__).resolve().parent.parent
# Minutes on a quiet 2-core CPU; 30 were not enough once, with other trainings sharing those 2 cores.
RUN_LIMIT_SECONDS = 3600
BLOCK = re.compile(r"<!-- quick-start\b.*?-->\s*```bash\n(.*?)```\s*<!-- /quick-start -->", re.DOTALL)


def quick_start_commands() -> list[str]:
    found = BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(found) == 1, "README.md needs one ```bash block between <!-- quick-start --> and <!-- /quick-start -->"
    return [line for line in found[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_quick_start_is_an_install_and_a_run():
    commands = quick_start_commands()
    assert len(commands) == 2 and commands[0].startswith("pip install ") and "fmnist_exp.run" in commands[1]
    # No placeholder the reader must replace, and no environment variable to set first.
    assert not any(re.search(r"/path/to|<[^>]+>|\bexport\b", command) for command in commands), commands


def test_the_install_line_names_an_extra_that_brings_the_default_backend():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    (install,) = [command for command in quick_start_commands() if command.startswith("pip install ")]
    words = shlex.split(install, comments=True)
    assert words[:3] == ["pip", "install", "-e"] and len(words) == 4, words
    extras = re.fullmatch(r"\.\[([\w,-]+)\]", words[3])
    assert extras, f"{words[3]}: expected the checkout with extras, .[name]"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = extras.group(1).split(",")
    assert set(names) <= set(declared), f"{names}: not all extras of pyproject.toml ({sorted(declared)})"
    assert any(requirement.startswith("tensorflow") for name in names for requirement in declared[name])
    assert importlib.util.find_spec("tensorflow") is not None


@pytest.mark.slow
def test_the_quick_start_runs_as_printed(full_data_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("KERAS_BACKEND", "MLFLOW_RUN_ID")}
    env["FMNIST_DATA_DIR"] = str(full_data_dir)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    # `python` in the README is the interpreter running these tests (its venv's bin first on PATH).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    outputs = []
    for command in quick_start_commands():
        if command.startswith("pip install "):
            continue  # checked by the test above
        # Its own session, so that a run past the limit is stopped whole (the shell and its python).
        process = subprocess.Popen(  # noqa: S602 (the README's own line, as a reader pastes it into a shell)
            command, shell=True, executable="/bin/bash", cwd=work, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            output, _ = process.communicate(timeout=RUN_LIMIT_SECONDS)
        except subprocess.TimeoutExpired:
            stop_process_group(process)
            raise
        outputs.append(output)
        assert process.returncode == 0, f"{command}\nexit {process.returncode}\n{output[-3000:]}"
    accuracy = re.search(r"test_accuracy=(\d\.\d+)", outputs[-1])
    assert accuracy, f"no test accuracy printed:\n{outputs[-1][-3000:]}"
    # The README says the speedrun preset passes the article's 90.52%.
    assert float(accuracy.group(1)) > 0.9052, outputs[-1][-3000:]
    # It wrote where a newcomer looks: Hydra's outputs/ in the working folder, and the store.
    assert (work / "outputs").is_dir() and (tmp_path / "mlruns" / "mlflow.db").is_file()
