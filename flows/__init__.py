"""The reference model and its MLOps flows: train → register → evaluate → promote, rollback.

Nothing heavy is imported until used: ``import flows`` loads neither torch nor Prefect.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "pipeline": "gpt_observatory.flows.flows",
    "train": "gpt_observatory.flows.flows",
    "register": "gpt_observatory.flows.flows",
    "evaluate": "gpt_observatory.flows.flows",
    "promote": "gpt_observatory.flows.flows",
    "rollback": "gpt_observatory.flows.flows",
    "canary": "gpt_observatory.flows.canary",
    "guard": "gpt_observatory.flows.canary",
    "CanarySettings": "gpt_observatory.flows.canary_settings",
    "PipelineResult": "gpt_observatory.flows.flows",
    "PipelineSettings": "gpt_observatory.flows.settings",
    "load_settings": "gpt_observatory.flows.settings",
    "Decision": "gpt_observatory.flows.history",
    "TinyGPTModel": "gpt_observatory.flows.pyfunc",
    "TinyGPT": "gpt_observatory.flows.gpt",
    "ByteTokenizer": "gpt_observatory.flows.gpt",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    return getattr(import_module(module), name)
