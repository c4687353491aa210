"""Optional dependencies: which extra installs each, and the error that says so.

Shipped code imports an optional dependency only where it is needed (lazily); the command line
turns a missing one into one line naming the extra to install (``tests/test_packaging.py``).
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Final

DISTRIBUTION: Final = "gpt-observatory"
OPTIONAL: Final = {"torch": "torch"}  # import name -> the extra that installs it
_PINS: Final = {"torch": "torch==2.13.0"}  # what the README installs with the extra (the CPU build)


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message says which extra brings it."""


def hint(module: str, needed_for: str = "this command") -> str:
    extra = OPTIONAL[module]
    pin = f" {_PINS[extra]}" if extra in _PINS else ""
    return (f"{needed_for} needs {module!r}, which the {extra!r} extra installs: "
            f"pip install{pin} '{DISTRIBUTION}[{extra}]'")


def require(module: str, needed_for: str) -> None:
    """Raise :class:`MissingExtra` unless ``module`` can be imported."""
    if find_spec(module) is None:
        raise MissingExtra(hint(module, needed_for))


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The hint for an import error of an optional dependency, or None for any other module."""
    top = (error.name or "").split(".")[0]
    return hint(top) if top in OPTIONAL else None
