"""What every flow does around its body: telemetry, task calls with retries, Prefect artifacts."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loguru import logger

from gpt_observatory.flows import instruments as inst
from gpt_observatory.flows.context import RunContext
from gpt_observatory.flows.errors import RegistryUnavailable, is_transient
from gpt_observatory.flows.tasks import options


@contextmanager
def observed(flow: str) -> Iterator[inst.PipelineInstruments]:
    """Telemetry for one flow run: configured, spanned, counted by outcome, flushed at the end."""
    inst.ensure_telemetry()
    instruments = inst.instruments()
    ok = False
    with inst.root_span(flow):
        try:
            yield instruments
            ok = True
        finally:
            instruments.run(flow, ok)
            inst.flush()


@contextmanager
def in_process_subflows() -> Iterator[None]:
    """Run the subflows called inside without their own heartbeats.

    They run in this process, whose top-level flow run already sends heartbeats. Prefect 3.8
    starts a heartbeat thread per flow run and joins it (it sleeps in 1 s steps) when the run
    ends: measured 1.18 s per trivial flow run with it, 0.22 s without. A crashed process still
    shows through the top-level run's heartbeats.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def call(task: Any, context: RunContext, action: str, *args: Any) -> Any:
    """Run a Prefect task with the run's configured retries; when they are spent on a transient
    MLflow error, raise :class:`RegistryUnavailable` saying what was being done."""
    try:
        return task.with_options(**options(context.settings))(*args)
    except Exception as e:
        if is_transient(e):
            raise RegistryUnavailable(context.tracking_uri, action, context.settings.retries + 1, e) from e
        raise


def flow_run() -> tuple[str | None, str | None]:
    """(id, name) of the current Prefect flow run, when there is one."""
    from prefect.runtime import flow_run as current

    run_id = current.id
    return (str(run_id) if run_id else None), (current.name if run_id else None)


def holder() -> str:
    run_id, _ = flow_run()
    return run_id or f"process-{uuid.uuid4().hex[:12]}"


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """A Prefect artifact; best effort (the registry holds the record that counts)."""
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(markdown=markdown, key=key, description=description)
    except Exception as e:  # artifact API down: the decision is already in the registry
        logger.warning("could not create Prefect artifact {}: {}", key, e)


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    from prefect.artifacts import create_table_artifact

    try:
        create_table_artifact(table=rows, key=key, description=description)
    except Exception as e:  # see publish_markdown
        logger.warning("could not create Prefect artifact {}: {}", key, e)
