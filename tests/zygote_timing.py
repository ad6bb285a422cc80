"""How long one command takes to start and end, as a new interpreter and as a zygote's child.

`python tests/zygote_timing.py` (with FMNIST_DATA_DIR set as for the suite) times, three times each
and one at a time, a small run (helpers.SWEEP_RUN) as a new interpreter and as a warm zygote's child,
and a refusal (batch_size=0) as a new interpreter and as a cold zygote's child. The figures in
docs/reliability.md ("The suite's duration") come from it. Not a test: pytest does not collect it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import helpers


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="zygote-timing-"))
    helpers.session_zygote(warm=True)  # both started before the timing begins
    helpers.session_zygote(warm=False)

    def timed(kind: str, arguments: list[str], number: int) -> tuple[float, int]:
        name = f"{kind}{number}"
        uri = f"sqlite:///{folder / name}.db"
        start = time.perf_counter()
        result = helpers.run_command(
            "fmnist_exp.run",
            [*arguments, f"hydra.run.dir={folder / name}"],
            folder,
            {"MLFLOW_TRACKING_URI": uri},
            kind=kind,
        )
        return time.perf_counter() - start, result.returncode

    cases = (("small run", list(helpers.SWEEP_RUN), ("new", "warm")), ("refusal", ["batch_size=0"], ("new", "cold")))
    try:
        for label, arguments, kinds in cases:
            for kind in kinds:
                runs = [timed(kind, arguments, number) for number in range(3)]
                seconds = ", ".join(f"{value:.2f}" for value, _ in runs)
                print(f"{label:10} {kind:5} {seconds} s, exit {sorted({code for _, code in runs})}", flush=True)
    finally:
        helpers.close_zygotes()


if __name__ == "__main__":
    main()
