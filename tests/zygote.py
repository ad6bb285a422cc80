"""A process that imports the runner's libraries once, then forks one child per command it is sent.

Each child is a real process (its own pid, environment, working folder, standard streams and exit
code) that runs `python -m <module> <arguments>` as the interpreter would, started in milliseconds
instead of the second or two an interpreter spends importing Hydra, OmegaConf and NumPy. The many
bad-input cases of tests/test_cli.py run through it (tests/helpers.py, Zygote).

Nothing of fmnist_exp is imported here: its modules read the environment (HOME, the data and cache
folders) when they are imported, and each child has an environment of its own. Nor is anything that
starts a thread, which a fork would not carry over.

Protocol: one JSON line per command on stdin, {"module", "argv", "cwd", "env", "stdout", "stderr",
"imported"}; two JSON lines back per command: {"pid"} once the child runs (so that the test can end
it), then {"returncode"} when it has ended. The child writes the frameworks it
imported (TensorFlow, Keras, PyTorch, JAX) to the file named by "imported" as it exits.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys

import hydra  # noqa: F401  (what every command imports first: the start-up the children share)
import numpy  # noqa: F401
import omegaconf  # noqa: F401
import yaml  # noqa: F401

FRAMEWORKS = ("tensorflow", "keras", "torch", "jax")


def child(request: dict) -> None:
    """Become the command: its folder, environment, streams and argv; never returns."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for descriptor, path in ((1, request["stdout"]), (2, request["stderr"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, descriptor)
        os.close(handle)
    os.close(0)  # the zygote's requests are not the command's to read

    def record_imports() -> None:
        with open(request["imported"], "w") as handle:
            json.dump([name for name in FRAMEWORKS if name in sys.modules], handle)

    atexit.register(record_imports)  # registered first, so it runs last
    sys.argv = [request["module"], *request["argv"]]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    sys.exit(0)  # through SystemExit, as the interpreter ends: atexit handlers run, streams flush


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
