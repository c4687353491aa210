"""Observatory telemetry: one call sets up OpenTelemetry traces, metrics and logs.

>>> import telemetry
>>> handle = telemetry.configure("my-service")   # jsonl files under ./.observatory by default
>>> handle.shutdown()                             # also runs at exit
"""

from __future__ import annotations

__version__ = "0.1.0"

from gpt_observatory.telemetry._setup import MemoryView, Telemetry, configure, current, shutdown
from gpt_observatory.telemetry.settings import ConfigError, Settings, state_dir

__all__ = [
    "ConfigError",
    "MemoryView",
    "Settings",
    "Telemetry",
    "__version__",
    "configure",
    "current",
    "shutdown",
    "state_dir",
]
