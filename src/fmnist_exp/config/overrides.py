"""The command line's grammar in one place: override keys and values, multirun, Hydra's sweep syntax.

An override is `key=value`, `+key=value` (add), `++key=value` (force) or `~key` (delete). Whether a
value sweeps (`a,b`, `choice(...)`, `range(...)`, `interval(...)`, `glob(...)`, `tag(...)`) is
Hydra's own parser's answer; `[a,b]` is a list, not a sweep. Plain Python, cheap to import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MULTIRUN_FLAGS = ("-m", "--multirun")
SWEEP_FUNCTIONS = ("choice", "range", "interval", "glob", "tag")
_SWEEP_FUNCTION = re.compile(rf"^\s*({'|'.join(SWEEP_FUNCTIONS)})\(")


def key(override: str) -> str:
    """The dotted key: `+model.x=1` -> `model.x`, `~seed` -> `seed`."""
    return override.split("=", 1)[0].lstrip("+~")


def value(override: str) -> str:
    """What follows the first `=`, as written ("" for `~key`)."""
    return override.partition("=")[2]


def is_multirun(arguments: Iterable[str]) -> bool:
    return any(argument in MULTIRUN_FLAGS for argument in arguments)


def overrides_of(arguments: Iterable[str]) -> list[str]:
    """The `key=value` overrides among command-line arguments (flags like -m, --cfg job left out)."""
    return [
        argument
        for argument in arguments
        if not argument.startswith("-") and ("=" in argument or argument.startswith("~"))
    ]


def by_key(arguments: Iterable[str]) -> dict[str, str]:
    """{key: value} of the overrides; a key given twice keeps its last value, as Hydra's error names."""
    return {key(override): value(override) for override in overrides_of(arguments)}


def values_of(arguments: Iterable[str], wanted: str) -> list[str]:
    """Every value given to `wanted`, in order."""
    return [value(override) for override in overrides_of(arguments) if key(override) == wanted]


def swept_by_function(value: str) -> bool:
    """`choice(...)`, `range(...)`, ...: a sweep whose options are not listed with commas."""
    return bool(_SWEEP_FUNCTION.match(value))


def is_sweep(override: str) -> bool:
    """Whether Hydra would sweep this override with -m (its own parser decides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides([override])[0].is_sweep_override()
    except HydraException:  # Hydra will name the error itself; guess from the text meanwhile
        written = value(override)
        return bool(_SWEEP_FUNCTION.match(written)) or _top_level_comma(written)


def _top_level_comma(text: str) -> bool:
    depth, quote = 0, ""
    for character in text:
        if quote:
            quote = "" if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character in "[{(":
            depth += 1
        elif character in "]})":
            depth -= 1
        elif character == "," and depth == 0:
            return True
    return False
