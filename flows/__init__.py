"""The reference model and its MLOps flows: train → register → evaluate → promote, rollback.

Nothing heavy is imported until used: importing ``gpt_observatory.flows`` loads neither torch
nor Prefect.

- ``model/``: the reference model (``gpt``, ``training``, ``evaluation``, ``pyfunc``, ``data/``);
- flows: ``pipeline`` (the lifecycle once), ``lifecycle`` (train, register, evaluate),
  ``promotion`` (promote, rollback), ``canary`` (canary, guard); their tasks in ``tasks``;
- around them: ``context`` (what one run shares), ``settings``, ``gates`` (offline and live),
  ``decisions`` (locks and records of a champion decision), ``lease``, ``registry``, ``history``,
  ``lineage``, ``live`` (Prometheus figures), ``stores``, ``instruments``, ``errors``.
"""

from __future__ import annotations

from gpt_observatory._lazy import exports

# The ``pipeline`` and ``canary`` flows are not re-exported: their modules have the same names,
# and an imported submodule is what the package attribute holds.
_EXPORTS = {
    "PipelineResult": "gpt_observatory.flows.pipeline",
    "train": "gpt_observatory.flows.lifecycle",
    "register": "gpt_observatory.flows.lifecycle",
    "evaluate": "gpt_observatory.flows.lifecycle",
    "promote": "gpt_observatory.flows.promotion",
    "rollback": "gpt_observatory.flows.promotion",
    "guard": "gpt_observatory.flows.canary",
    "RunContext": "gpt_observatory.flows.context",
    "CanarySettings": "gpt_observatory.flows.settings",
    "PipelineSettings": "gpt_observatory.flows.settings",
    "load_settings": "gpt_observatory.flows.settings",
    "Decision": "gpt_observatory.flows.history",
    "TinyGPTModel": "gpt_observatory.flows.model.pyfunc",
    "TinyGPT": "gpt_observatory.flows.model.gpt",
    "ByteTokenizer": "gpt_observatory.flows.model.gpt",
}

__all__ = sorted(_EXPORTS)

__getattr__ = exports(__name__, _EXPORTS)
