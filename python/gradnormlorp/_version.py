"""The package version and the check that the library carries the same one.

capi/VERSION is the project's one version number: the Go library embeds it
(gnlp_version), setup.py puts it in the package metadata and ships a copy as
gradnormlorp/VERSION, and this module reads it.
"""

from __future__ import annotations

import os

from . import _lib

_HERE = os.path.dirname(os.path.abspath(__file__))
VERSION_FILES = (
    os.path.join(_HERE, "VERSION"),  # an installed package (copied there by setup.py)
    os.path.normpath(os.path.join(_HERE, os.pardir, os.pardir, "capi", "VERSION")),  # a source checkout
)


def read_version() -> str:
    for path in VERSION_FILES:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            continue
    raise ImportError(
        f"gradnormlorp: no VERSION file (looked for {' and '.join(VERSION_FILES)}); "
        "the installation is incomplete: reinstall the package"
    )


def check_library_version(version: str) -> None:
    """ImportError if the library next to the package (or $GNLP_LIBRARY)
    reports another version than the package's. A library that is not there
    yet is not checked here: the first optimizer reports how to build it."""
    path = _lib.library_path()
    if not os.path.isfile(path):
        return
    found = _lib.library_version()
    if found != version:
        raise ImportError(
            f"gradnormlorp: the library {path} is version {found}, but the Python package is version "
            f"{version}: they come from different sources. Rebuild the library from this source tree "
            "(`make lib`) or reinstall the package (`pip install` the wheel or the source tree)."
        )
