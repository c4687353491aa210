"""The reference model and its MLOps flows: train → register → evaluate → promote, rollback.

Nothing heavy is imported until used: ``import flows`` loads neither torch nor Prefect.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "pipeline": "flows.flows",
    "train": "flows.flows",
    "register": "flows.flows",
    "evaluate": "flows.flows",
    "promote": "flows.flows",
    "rollback": "flows.flows",
    "canary": "flows.canary",
    "guard": "flows.canary",
    "CanarySettings": "flows.canary_settings",
    "PipelineResult": "flows.flows",
    "PipelineSettings": "flows.settings",
    "load_settings": "flows.settings",
    "Decision": "flows.history",
    "TinyGPTModel": "flows.pyfunc",
    "TinyGPT": "flows.gpt",
    "ByteTokenizer": "flows.gpt",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    return getattr(import_module(module), name)
