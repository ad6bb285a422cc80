"""`hydra/launcher=gpu_pack`: a sweep's jobs side by side on one GPU, each with a bounded share of it.

Hydra's joblib launcher, with its number of parallel jobs chosen from the GPU's memory and the CPU
cores (unless hydra.launcher.n_jobs is given), and with every job's GPU memory capped at its share:
JAX through XLA_PYTHON_CLIENT_MEM_FRACTION (on-demand allocation is already on, backend.activate),
PyTorch through FMNIST_GPU_MEMORY_FRACTION, which device.configure_gpus hands to
torch.cuda.set_per_process_memory_fraction (TensorFlow grows its memory on demand). Without a GPU it
packs one job at a time unless told otherwise. The chosen count is written into the sweep's config
(hydra.launcher.n_jobs), so that each job's CPU threads are the cores divided among the jobs
(jobs.threads_per_job, as for the joblib launcher), and the cap into each job's hydra.job.env_set.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from omegaconf import DictConfig, open_dict, read_write

from fmnist_exp.errors import ConfigError

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
except ImportError:  # the sweeps extra is not installed: Hydra then says the launcher is unknown
    JoblibLauncher = None

# What a job's share is multiplied by: each process also holds a CUDA context outside XLA's pool.
HEADROOM = 0.9
MEMORY_FRACTION_VARIABLES = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "FMNIST_GPU_MEMORY_FRACTION")


def gpu_memory_mb() -> int | None:
    """The first GPU's memory in MiB from nvidia-smi (no framework is imported); None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return int(answer.stdout.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def jobs_to_pack(memory_mb: int | None, cores: int, job_memory_mb: int) -> int:
    """As many jobs as the GPU holds at job_memory_mb each, at most one per core; 1 without a GPU."""
    if not memory_mb:
        return 1
    return max(1, min(cores, memory_mb // job_memory_mb))


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_launcher(launcher: DictConfig) -> None:
    """The keys of this launcher (and n_jobs of Hydra's joblib launcher under it), checked before the
    sweep starts: a count or a memory size that is zero, negative or not a number is refused by name."""
    target = str(launcher.get("_target_", ""))
    if not target.endswith("JoblibLauncher"):
        return
    n_jobs = launcher.get("n_jobs")
    if target.endswith("GpuPackJoblibLauncher"):
        if not (_whole(n_jobs) and n_jobs >= -1):
            raise ConfigError(
                f"hydra.launcher.n_jobs: {n_jobs!r} must be a whole number: 0 (as many as the GPU holds), "
                "-1 (one per CPU core) or a count of jobs at a time"
            )
        memory = launcher.get("job_memory_mb")
        if not (_whole(memory) and memory > 0):
            raise ConfigError(f"hydra.launcher.job_memory_mb: {memory!r} must be a whole number of MiB above 0")
        gpu = launcher.get("gpu_memory_mb")
        if gpu is not None and not (_whole(gpu) and gpu > 0):
            raise ConfigError(
                f"hydra.launcher.gpu_memory_mb: {gpu!r} must be a whole number of MiB above 0, or null (nvidia-smi's)"
            )
        others = launcher.get("other_jobs")
        if not (_whole(others) and others >= 0):
            raise ConfigError(f"hydra.launcher.other_jobs: {others!r} must be a whole number, 0 or more")
    elif n_jobs is not None and not (_whole(n_jobs) and n_jobs != 0):
        raise ConfigError(
            f"hydra.launcher.n_jobs: {n_jobs!r} must be a whole number other than 0 (-1: one per CPU core)"
        )


def memory_fraction(jobs: int) -> str:
    """Each job's share of the GPU's memory when `jobs` processes share it, as the variables take it."""
    return f"{HEADROOM / jobs:.3g}"


class GpuPackJoblibLauncher(JoblibLauncher or object):
    """Hydra's joblib launcher; its extra keys: job_memory_mb, gpu_memory_mb (null: nvidia-smi's) and
    other_jobs (processes of other commands on the same GPU meanwhile, which share its memory too)."""

    def __init__(
        self, job_memory_mb: int = 4096, gpu_memory_mb: int | None = None, other_jobs: int = 0, **joblib: object
    ) -> None:
        super().__init__(**joblib)
        self.job_memory_mb, self.gpu_memory_mb, self.other_jobs = int(job_memory_mb), gpu_memory_mb, int(other_jobs)

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        memory = self.gpu_memory_mb if self.gpu_memory_mb is not None else gpu_memory_mb()
        jobs = int(self.joblib.get("n_jobs") or jobs_to_pack(memory, cpu_cores(), self.job_memory_mb))
        jobs = cpu_cores() if jobs < 0 else jobs  # joblib's -1: one per core
        self.joblib["n_jobs"] = jobs
        # Each job's config is composed again from the sweep's Hydra overrides: they carry the choices.
        chosen = [f"hydra.launcher.n_jobs={jobs}"]
        if memory:
            share = memory_fraction(jobs + self.other_jobs)
            chosen += [f"++hydra.job.env_set.{name}='{share}'" for name in MEMORY_FRACTION_VARIABLES]
        with read_write(config.hydra.launcher), open_dict(config.hydra.launcher):
            config.hydra.launcher.n_jobs = jobs
        with read_write(config.hydra.overrides.hydra):
            config.hydra.overrides.hydra.extend(chosen)
        where = f"a GPU of {memory:,} MiB" if memory else "no GPU"
        log.info(f"gpu_pack: {jobs} jobs at a time ({where}, {cpu_cores()} cores); {' '.join(chosen)}")
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)


def register() -> None:
    """Make the launcher known to Hydra (a plugin must be registered before a config names it)."""
    if JoblibLauncher is not None:
        from hydra.core.plugins import Plugins

        Plugins.instance().register(GpuPackJoblibLauncher)
