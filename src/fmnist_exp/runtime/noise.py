"""Start-up lines of the libraries that a new user reads as failures, silenced where they start.

Every entry point calls `quiet()` before anything imports TensorFlow, and `import_tensorflow()` where
its work begins. What is silenced, and why it is safe to:

- TensorFlow's C++ INFO and WARNING lines (TF_CPP_MIN_LOG_LEVEL=2; its errors still print).
- TensorFlow's absl lines printed before absl::InitializeLog: "Could not find cuda drivers on your
  machine" (twice, once per TensorFlow library that probes for CUDA) and "failed call to cuInit: ...
  UNKNOWN ERROR (303)" on a machine without a GPU. TF_CPP_MIN_LOG_LEVEL does not reach them
  (tensorflow/tensorflow#100442), so TensorFlow is imported with the process's stderr captured, and
  every other line is written back.
- MLflow's INFO lines "Creating initial MLflow database tables..." and "Updating database tables",
  printed when a new SQLite store is created or migrated: routine, not a problem.
- TensorFlow's "triggered tf.function retracing" warning: each job of a sweep builds and compiles a
  new model in the same process, and Keras traces the new model's train step, as it must.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import tempfile

# Lines of TensorFlow's start-up on a machine without a GPU; anything else it prints is kept.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used"
    r"|failed call to cuInit: .*UNKNOWN ERROR \(303\)"
)


class _DropRetracing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_RETRACING = _DropRetracing()


def quiet() -> None:
    """Silence what can be silenced by settings; call it before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    # Its start/stop and "no GPU" lines, at INFO on MLflow's own handler where Hydra configures no logging (bench).
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    # TensorFlow logs the retracing warning on its own logger; the filter waits there until it does.
    tensorflow_logger = logging.getLogger("tensorflow")
    if _RETRACING not in tensorflow_logger.filters:
        tensorflow_logger.addFilter(_RETRACING)


def import_tensorflow() -> None:
    """Import TensorFlow (when it is the Keras backend) without its CPU-machine start-up lines."""
    if (
        "tensorflow" in sys.modules
        or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow"
        or importlib.util.find_spec("tensorflow") is None
    ):
        return
    quiet()
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # CUDA is probed here: the cuInit line
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not STARTUP_NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()
