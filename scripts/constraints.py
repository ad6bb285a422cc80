"""Writes constraints.txt: the installed release of everything the project's extras pull in.

Run it in the environment where the extras are installed (CI's: `pip install -e ".[dev,torch-cpu-test]"`):

    python3 scripts/constraints.py dev torch-cpu-test > constraints.txt

It reads the project's own requirements from pyproject.toml (not from an installed copy's metadata,
which may be older), then follows each installed distribution's requirements, markers evaluated for
this interpreter, and prints `name==version` for every one reached. A requirement that applies here
but is not installed stops it: the file would not be the set that was tested.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# The releases the test suite runs against: everything `pip install -e ".[{extras}]"` pulls in,
# as installed where CI runs (Python {python}, Linux x86-64). CI installs with `-c constraints.txt`.
# Refresh after a dependency changes, in that environment with the new releases installed:
#   python3 scripts/constraints.py {args} > constraints.txt
# Local version labels (torch's +cpu) are left off: `==2.13.0` takes the CPU build where it lies on
# disk, as on CI, and PyPI's build elsewhere.
"""


def applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras or {""})


def main(extras: list[str]) -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    wanted: list[Requirement] = []

    def want_project(chosen: set[str]) -> None:
        for text in [*project["dependencies"], *(item for extra in chosen for item in optional[extra])]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == name:  # the project's own extras, e.g. dev's
                want_project(set(requirement.extras))
            else:
                wanted.append(requirement)

    want_project(set(extras))
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while wanted:
        requirement = wanted.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{requirement} is required but not installed here")
        version = distribution.version
        if not requirement.specifier.contains(version, prereleases=True):
            sys.exit(f"{requirement}: {version} is installed")
        pinned[key[0]] = version.split("+")[0]
        for text in distribution.requires or []:
            dependency = Requirement(text)
            if applies(dependency, set(requirement.extras)):
                wanted.append(dependency)
    python = ".".join(map(str, sys.version_info[:3]))
    header = HEADER.format(extras=",".join(extras), python=python, args=" ".join(extras))
    return header + "".join(f"{package}=={pinned[package]}\n" for package in sorted(pinned))


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1:] or ["dev", "torch-cpu-test"]))
