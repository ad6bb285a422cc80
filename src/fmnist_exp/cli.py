"""`key=value` arguments for the small commands (evaluate, predict, report), with clear errors."""

from __future__ import annotations

import sys
from typing import Any

from fmnist_exp.errors import fail


def parse_assignments(argv: list[str], defaults: dict[str, Any], usage: str) -> dict[str, Any]:
    """Values from `key=value` words over `defaults`; a value keeps the type of its default."""
    values = dict(defaults)
    for word in argv:
        if word in ("-h", "--help"):
            print(usage)
            sys.exit(0)
        key, separator, raw = word.partition("=")
        if not separator:
            fail(f"{word!r} is not key=value\n{usage}")
        if key not in defaults:
            fail(f"{key}: not a known key; allowed: {', '.join(defaults)}")
        values[key] = convert(key, raw, defaults[key])
    return values


def convert(key: str, raw: str, default: Any) -> Any:
    if raw.lower() in ("null", "none", ""):
        return None
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false"):
                raise ValueError
            return raw.lower() == "true"
        if isinstance(default, int):
            return int(raw)
    except ValueError:
        fail(f"{key}: {raw!r} is not a {type(default).__name__}")
    return raw
