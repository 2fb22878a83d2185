"""The optional parts of serve-app and the extra that installs each (pyproject.toml). Using one
without its extra fails with a message that names what to install, not an ImportError from deep
inside a replica."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from serve_app.errors import ServeAppError

EXTRA_OF_MODULE = {"torch": "torch", "alibi_detect": "drift"}
"""Top-level module -> the extra of serve-app that brings it."""


class MissingExtra(ServeAppError):
    """A feature was used whose optional dependency is not installed."""


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, needed_for: str) -> ModuleType:
    """`module`, imported; else MissingExtra naming what needed it and the extra to install."""
    top = module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != top:
            raise  # the module is there, but something it imports is not: a real bug
        raise MissingExtra(
            f"{needed_for} needs {top}, which is not installed here: pip install 'serve-app[{EXTRA_OF_MODULE[top]}]'"
        ) from None
