"""Backends: small exporter classes found by name through OpenTelemetry's entry-point groups.

``OTEL_TRACES_EXPORTER=jsonl,otlp`` (or ``traces_exporter=[...]``) names them. Ours are registered
in ``opentelemetry_traces_exporter`` / ``opentelemetry_metrics_exporter`` /
``opentelemetry_logs_exporter``; where OpenTelemetry itself already registers a name (``otlp``,
``console``, ``prometheus``) ours is registered as ``observatory_<name>`` and preferred.
A third-party backend registers a class under the same groups; it is built with no arguments,
as the OTel SDK builds it, unless it declares a ``from_settings(settings)`` classmethod
(:class:`~gpt_observatory.telemetry.backends._base.FromSettings`), as ours do.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from gpt_observatory.telemetry.backends._base import FromSettings
from gpt_observatory.telemetry.settings import ConfigError, Settings

Signal = Literal["traces", "metrics", "logs"]
GROUPS: dict[Signal, str] = {
    "traces": "opentelemetry_traces_exporter",
    "metrics": "opentelemetry_metrics_exporter",
    "logs": "opentelemetry_logs_exporter",
}
_OURS = "observatory_"
_PACKAGE = __name__.split(".")[0] + "."  # our distribution's one import namespace


def _entry_points(group: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        # Prefer our own registration when two distributions use one name.
        if ep.name not in found or ep.value.startswith(_PACKAGE):
            found[ep.name] = ep
    return found


def available(signal: Signal) -> list[str]:
    """Backend names usable for ``signal``."""
    return sorted({n.removeprefix(_OURS) for n in _entry_points(GROUPS[signal])})


def resolve(signal: Signal, name: str) -> type:
    """The exporter (or metric reader) class registered as ``name`` for ``signal``."""
    eps = _entry_points(GROUPS[signal])
    ep = eps.get(_OURS + name) or eps.get(name)
    if ep is None:
        elsewhere = [s for s, g in GROUPS.items() if s != signal and {name, _OURS + name} & set(_entry_points(g))]
        hint = f"; {name!r} exists for {', '.join(elsewhere)} only" if elsewhere else ""
        raise ConfigError(
            f"unknown {signal} backend {name!r} (OTEL_{signal.upper()}_EXPORTER / {signal}_exporter): "
            f"no entry point {name!r} in group {GROUPS[signal]!r}{hint}. Available: {', '.join(available(signal))}"
        )
    try:
        return ep.load()
    except Exception as e:
        raise ConfigError(f"{signal} backend {name!r} ({ep.value}) failed to import: {e}") from e


def build(signal: Signal, name: str, settings: Settings) -> Any:
    """An instance of backend ``name`` for ``signal``, configured from ``settings``."""
    cls = resolve(signal, name)
    try:
        return cls.from_settings(settings) if isinstance(cls, type) and issubclass(cls, FromSettings) else cls()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{signal} backend {name!r} could not start: {e}") from e
