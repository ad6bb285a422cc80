"""`hydra/launcher=ray_cluster`: Hydra's Ray launcher, where a lost worker costs its own trial only.

hydra-ray-launcher 1.4.0rc3 gathers a batch with `[ray.get(run) for run in runs]`: one worker that
dies (SIGKILL, the OOM killer, a lost machine) makes `ray.get` raise, and the results of every job of
the batch are lost with it. Here each job's result is gathered on its own, and a job whose worker
died is a failed job (its exception is its return value), which the study sweeper tells Optuna as a
FAILED trial before it goes on. Its MLflow run is closed KILLED by the next command that opens the
store (store.reap_orphans). conf/hydra/launcher/ray_cluster.yaml sets `max_retries: 0`: Ray would
otherwise train the lost job again, as a second MLflow run of the same trial.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fmnist_exp.errors import ConfigError

log = logging.getLogger(__name__)

ADDRESS_KEY = "hydra.launcher.ray.init.address"
ADDRESS_FORMS = (
    "host:port of a running cluster (ray start --head prints it), ray://host:port (Ray Client), auto "
    "(the cluster RAY_ADDRESS or the latest `ray start` on this machine names) or local (a new one here)"
)
CONNECT_SECONDS = 3.0  # a reachable cluster answers a TCP connect at once; Ray itself retries for minutes


def check_launcher(launcher: DictConfig) -> None:
    """The Ray launchers' cluster address, checked before the sweep starts: a malformed one is refused
    by name, and one nothing answers at within CONNECT_SECONDS (Ray would retry for minutes)."""
    if not str(launcher.get("_target_", "")).endswith("RayLauncher"):
        return
    if OmegaConf.is_missing(launcher.ray.init, "address"):
        raise ConfigError(f"{ADDRESS_KEY}: required: {ADDRESS_FORMS}")
    address = launcher.ray.init.get("address")
    if address is None or address == "local":
        return  # ray.init finds a cluster started here, or starts one in this process
    where = str(address).strip()
    if where == "auto":
        where = os.environ.get("RAY_ADDRESS") or latest_cluster() or ""
        if not where or where == "auto":
            raise ConfigError(
                f"{ADDRESS_KEY}: auto found no running Ray cluster (RAY_ADDRESS is unset and no `ray start` on "
                "this machine left its address); start one with ray start --head, or give its host:port"
            )
    host, port = host_and_port(where.removeprefix("ray://"), str(address))
    try:
        with socket.create_connection((host, port), timeout=CONNECT_SECONDS):
            pass
    except OSError as error:
        raise ConfigError(
            f"{ADDRESS_KEY}: nothing answers at {host}:{port} within {CONNECT_SECONDS:g} s ({error}); start the "
            "cluster (ray start --head) or give the address it printed"
        ) from error


def latest_cluster() -> str | None:
    """The address the latest `ray start` on this machine wrote (Ray's ray_current_cluster file)."""
    folder = Path(os.environ.get("RAY_TMPDIR") or "/tmp/ray")  # noqa: S108 (Ray's own default folder)
    try:
        return (folder / "ray_current_cluster").read_text().strip() or None
    except OSError:
        return None


def host_and_port(address: str, given: str) -> tuple[str, int]:
    host, separator, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 address is written [::1]:6379
    if not separator or not host or "/" in address or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{ADDRESS_KEY}: {given!r} is not a Ray address; give {ADDRESS_FORMS}")
    return host, int(port)


try:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
except ImportError:  # the sweeps extra is not installed: no Ray launcher to offer
    RayLauncher = None


def register() -> None:
    """Make the launcher known to Hydra (a plugin must be registered before a config names it)."""
    if RayLauncher is not None:
        from hydra.core.plugins import Plugins

        Plugins.instance().register(PerJobRayLauncher)


if RayLauncher is not None:

    class PerJobRayLauncher(RayLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            """The plugin's launch (hydra_ray_launcher._core.launch, 1.4.0rc3) with its last line,
            the batch's `ray.get`, replaced by one `ray.get` per job. It calls the plugin's private
            `_launcher_util`, here only (docs/design.md, "Private APIs we touch"; checked by
            tests/test_private_api.py); no upstream issue found."""
            from pathlib import Path

            import ray
            from hydra.core.singleton import Singleton
            from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
            from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray, start_ray
            from omegaconf import OmegaConf, open_dict

            setup_globals()
            configure_log(
                self.config.hydra.hydra_logging,
                self.config.hydra.verbose,
                execution_whitelist=getattr(self.hydra_context, "execution_whitelist", None),
            )
            Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
            log.info(f"Ray Launcher is launching {len(job_overrides)} jobs")
            start_ray(OmegaConf.create(OmegaConf.to_container(self.ray_cfg.init, resolve=True)))
            submitted = []
            for number, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = f"job_id_for_{number}"
                    sweep_config.hydra.job.num = number
                submitted.append(
                    launch_job_on_ray(
                        self.hydra_context, self.ray_cfg.remote, sweep_config, self.task_function, Singleton.get_state()
                    )
                )
            results = []
            for overrides, reference in zip(job_overrides, submitted, strict=True):
                try:
                    results.append(ray.get(reference))
                except ray.exceptions.RayError as error:  # its worker died: this job fails, not the batch
                    log.error(f"job {' '.join(overrides)} lost its Ray worker ({type(error).__name__})")
                    results.append(
                        JobReturn(
                            overrides=list(overrides),
                            status=JobStatus.FAILED,
                            _return_value=RuntimeError(f"its Ray worker was lost ({type(error).__name__})"),
                        )
                    )
            return results
