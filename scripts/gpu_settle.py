"""The driver of scripts/gpu_settle.sh: every open GPU question in one call, all on the one GPU at once.

    python scripts/gpu_settle.py SCRATCH OUT      (gpu_settle.sh sets up the environment first)

Started together, each in its own process group, logging to SCRATCH/<name>.log:
  article           experiment=article (100 epochs, test as validation) on seeds 1-3: how often it collapses
  plain_seed<N>     scripts/article_plain.py, the same recipe without the runner, on seeds 1-3
  default_cosine    the candidate default (the article's recipe with a cosine schedule) on seeds 1-3
  best_<candidate>  experiment=best's candidates (below) on seeds 1-3
  bench_b32, _b256  bench: the runner on the device stream (and on the NumPy stream) against bare Keras
The runner's groups are sweeps under hydra/launcher=gpu_pack, their seeds side by side, every job's
GPU memory capped at its share of all the jobs started here. At SETTLE_LIMIT seconds, or on SIGTERM
or SIGINT, whatever still runs is stopped and the summary says which parts are partial.
GPU_CHECK_SIZE=tiny shrinks the work (epochs, images) for a CPU and nothing else. SETTLE_PARTS=a,b
runs only the commands named (e.g. what a cut-short run left missing: article,plain_seed2).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SEEDS = "1,2,3"
# name: the overrides under experiment=best (its AdamW, cosine schedule and batch size 128).
BEST_CANDIDATES = {
    "resnet48_aug": ["model=resnet_small_aug", "model.width=48"],
    "resnet32_aug": ["model=resnet_small_aug", "model.width=32"],
    "wide_cnn_flip": ["model=wide_cnn_flip"],
}
SIZES = {
    # 100 epochs of the article took 3.2 s each alone on the H200 (320 s); the limit leaves the summary
    # and the machine's start inside a 9-minute call.
    "full": {"runner": [], "best": [], "plain": ["--epochs", "100"], "bench_images": {32: 60000, 256: 60000},
             "repeats": 3, "limit": 450},
    "tiny": {
        "runner": ["epochs=2", "data.max_train_samples=120", "data.max_test_samples=60", "batch_size=40"],
        "best": ["epochs=2", "data.max_train_samples=120", "data.max_test_samples=60"],
        "plain": ["--epochs", "2", "--max-train", "120", "--max-test", "60"],
        "bench_images": {32: 64, 256: 256}, "repeats": 1, "limit": 480,
    },
}  # fmt: skip
RUNNER_KEYS = ["trainer.verbose=2", "mlflow.system_metrics=false", "mlflow.log_model=false"]


@dataclass
class Job:
    name: str
    argv: list[str]
    jobs: int  # training processes it starts on the GPU


def sweep(name: str, overrides: list[str], seeds: int, scratch: Path) -> Job:
    """One group as a gpu_pack sweep: its seeds side by side; MLflow experiment settle_<name>."""
    argv = [sys.executable, "-m", "fmnist_exp.run", "-m", "hydra/launcher=gpu_pack", *overrides, *RUNNER_KEYS,
            f"seed={SEEDS}", f"mlflow.experiment_name=settle_{name}", f"hydra.sweep.dir={scratch / name}"]  # fmt: skip
    return Job(name, argv, seeds)


def plan(size: dict, scratch: Path) -> list[Job]:
    seeds = len(SEEDS.split(","))
    jobs = [sweep("article", ["experiment=article", *size["runner"]], seeds, scratch)]
    for seed in SEEDS.split(","):
        out = scratch / f"plain_article_seed{seed}.csv"
        jobs.append(Job(f"plain_seed{seed}", [sys.executable, "scripts/article_plain.py", "--seed", seed,
                                              *size["plain"], "--out", str(out)], 1))  # fmt: skip
    jobs.append(sweep("default_cosine", ["optimizer.schedule.name=cosine", *size["runner"]], seeds, scratch))
    for name, overrides in BEST_CANDIDATES.items():
        jobs.append(sweep(f"best_{name}", ["experiment=best", *overrides, *size["best"]], seeds, scratch))
    for batch in (32, 256):
        jobs.append(Job(f"bench_b{batch}", [sys.executable, "-m", "fmnist_exp.bench", f"batch_size={batch}",
                                            f"images={size['bench_images'][batch]}", f"repeats={size['repeats']}",
                                            "stream=device", "compare_stream=pydataset",
                                            f"output={scratch / f'bench_float32_b{batch}.json'}"], 1))  # fmt: skip
    return jobs


def pack(jobs: list[Job]) -> list[Job]:
    """Every sweep's jobs side by side (n_jobs = its seeds on a GPU, 1 on a CPU), capped at a share of all."""
    from fmnist_exp.sweeps import gpu_pack

    total, on_gpu = sum(job.jobs for job in jobs), gpu_pack.gpu_memory_mb() is not None
    for job in jobs:
        if "hydra/launcher=gpu_pack" in job.argv:
            job.argv += [f"hydra.launcher.n_jobs={job.jobs if on_gpu else 1}",
                         f"hydra.launcher.other_jobs={total - job.jobs}"]  # fmt: skip
    return jobs


class Stopped(Exception):
    """SIGTERM or SIGINT reached the driver."""


def on_signal(number, frame) -> None:
    raise Stopped(signal.Signals(number).name)


def start(job: Job, scratch: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    argv = [*job.argv, f"trainer.threads={threads}"] if "fmnist_exp.run" in job.argv else job.argv
    log = (scratch / f"{job.name}.log").open("w")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(running: dict[str, subprocess.Popen], grace: float = 20) -> None:
    """SIGTERM to each process group still running (the runner saves and closes its runs), then SIGKILL."""
    for process in running.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in running.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_all(jobs: list[Job], scratch: Path, limit: float) -> dict[str, str]:
    """Start every job, wait for all until `limit` seconds or a signal; each job's outcome by name."""
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // sum(job.jobs for job in jobs))
    started = time.monotonic()
    running = {job.name: start(job, scratch, threads) for job in jobs}
    print(f"gpu_settle: {len(jobs)} commands started, {sum(j.jobs for j in jobs)} training processes, "
          f"{threads} thread(s) each, limit {limit:.0f} s", flush=True)  # fmt: skip
    outcome: dict[str, str] = {}
    try:
        while len(outcome) < len(running) and time.monotonic() - started < limit:
            for name, process in running.items():
                if name not in outcome and process.poll() is not None:
                    outcome[name] = "finished" if process.returncode == 0 else f"exit {process.returncode}"
                    print(f"gpu_settle: {name} {outcome[name]} at {time.monotonic() - started:.0f} s", flush=True)
            time.sleep(0.5)
        reason = "time limit"
    except Stopped as signalled:
        reason = str(signalled)
    stop({name: process for name, process in running.items() if name not in outcome})
    for name in running:
        outcome.setdefault(name, f"stopped ({reason})")
    return outcome


def main() -> None:
    scratch, out = Path(sys.argv[1]), Path(sys.argv[2])
    size = SIZES[os.environ.get("GPU_CHECK_SIZE", "full")]
    limit = float(os.environ.get("SETTLE_LIMIT", size["limit"]))
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    planned = plan(size, scratch)
    parts = [part for part in os.environ.get("SETTLE_PARTS", "").split(",") if part]
    unknown = set(parts) - {job.name for job in planned}
    if unknown:
        raise SystemExit(f"SETTLE_PARTS: no command named {', '.join(sorted(unknown))}")
    jobs = pack([job for job in planned if not parts or job.name in parts])
    outcome = {}
    try:
        outcome = run_all(jobs, scratch, limit)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the summary is written whatever comes now
        sys.path.insert(0, str(Path(__file__).parent))
        import gpu_settle_summary

        gpu_settle_summary.write(scratch, out, outcome, time.monotonic() - started)


if __name__ == "__main__":
    main()
