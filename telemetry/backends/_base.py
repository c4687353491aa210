"""How a backend takes Observatory's settings: one classmethod, declared by the backend itself."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from gpt_observatory.telemetry.settings import Settings


@runtime_checkable
class FromSettings(Protocol):
    """A backend class that is built from :class:`Settings` (third-party backends may define it too);
    a class without it is built with no arguments, as the OTel SDK builds exporters."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Any: ...


class SettingsBackend:
    """Mixin for our backends whose ``__init__`` takes the settings (loaded from the environment when
    the OTel SDK builds one with no arguments)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Any:
        return cls(settings)  # type: ignore[call-arg]
