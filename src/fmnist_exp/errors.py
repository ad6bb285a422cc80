"""What the user can fix, told apart from bugs.

Every input the user gives (config, data, tracking store, model URI, files) that is wrong raises a
`UserError` subclass: the commands print its message as one line and exit 2, before any training.
Anything else is a bug: it keeps its traceback, the run ends FAILED and the process exits 1.
"""

from __future__ import annotations

import sys
from typing import NoReturn


class UserError(Exception):
    """Bad input the user can fix; the message names the key or file and what is allowed."""


class ConfigError(UserError):
    """A config key has a value that is not allowed."""


class DataError(UserError):
    """The data set is missing, corrupt or inconsistent; the message says where and how to fix it."""


class TrackingError(UserError):
    """The MLflow store cannot be reached or used."""


class ModelUriError(UserError):
    """A model URI cannot be resolved or loaded."""


class RunStopped(Exception):
    """Training stopped itself with no sound epoch to keep (a NaN in the first epoch): the run ends
    FAILED, the process exits 3. With a best epoch to keep, a NaN, a collapse or an exploded loss does
    not raise this: the run keeps that epoch and ends FINISHED, tagged (training/best_epoch.keep_best_epoch)."""


EXIT_USER_ERROR = 2
EXIT_RUN_STOPPED = 3
EXIT_INTERRUPTED = 130


class TrainingDiverged(RunStopped):
    """The loss became NaN or infinite before any epoch left a sound best checkpoint; the run ends FAILED."""


class TrainingCollapsed(RunStopped):
    """The accuracy fell back to chance and no best checkpoint is left; the run ends FAILED."""


class DownloadError(Exception):
    """A file could not be fetched from the mirror (no network, refused, HTTP error); data.locate turns
    it into a DataError that names the fixes."""


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """The one way every command reports a user error: one line on stderr, then exit."""
    print(f"fmnist_exp: error: {message}", file=sys.stderr)
    sys.exit(code)
