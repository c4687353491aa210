"""Which MLflow failures are worth a retry, and the error a flow ends with when retries run out."""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException

# Error codes an MLflow server (or its client, after its own HTTP retries) gives for a
# condition that may pass: the server is down, overloaded, or its database is busy.
TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"})
TRANSIENT_TEXT = ("connection refused", "max retries exceeded", "timed out", "database is locked",
                  "connection reset", "remote end closed", "failed to establish a new connection")


class RegistryUnavailable(RuntimeError):
    """MLflow kept failing after every retry; nothing after the failing step ran."""

    def __init__(self, uri: str, action: str, attempts: int, cause: BaseException) -> None:
        self.uri, self.action, self.attempts = uri, action, attempts
        super().__init__(
            f"MLflow at {uri} did not answer while {action} ({attempts} attempt(s); last error: "
            f"{_short(cause)}). Nothing after that step ran, so the champion alias is as it was. "
            f"Check that the tracking server is up (MLFLOW_TRACKING_URI / OBSERVATORY_PIPELINE_TRACKING_URI), "
            f"then run the flow again."
        )


class PromotionLockTimeout(TimeoutError):
    """Another promotion of the same model held the lock for longer than ``lock_timeout_s``."""


def is_transient(exc: BaseException) -> bool:
    """True for network failures, 5xx-style MLflow errors and a busy database."""
    import requests

    if isinstance(exc, RegistryUnavailable):
        return False
    if isinstance(exc, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, MlflowException):
        if exc.error_code in TRANSIENT_CODES:
            return True
        return any(text in str(exc).lower() for text in TRANSIENT_TEXT)
    return any(text in str(exc).lower() for text in TRANSIENT_TEXT[:2])


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a task only when its error is transient."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as e:  # the failure we are classifying
            exc = e
    return exc is not None and is_transient(exc)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
