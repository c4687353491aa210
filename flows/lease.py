"""A registry-side guard for alias changes: a lease kept as a tag on the registered model.

Alias writes are last-writer-wins and MLflow has no compare-and-set, so promotions are
serialized first by a Prefect global concurrency limit of 1. This lease is the second line,
for writers that bypass Prefect (two processes on the library API, two Prefect servers):
write the lease, wait ``settle_s``, read it back, and go ahead only if it is still ours. A
writer that raced us in that window overwrote the tag and wins; we retry. It is a timing
guard (the window must exceed one registry round trip), not a consensus protocol.

:func:`acquire` runs as a Prefect task (retried on transient MLflow errors); :func:`held` keeps
what it took for the decision and releases it.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from loguru import logger
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gpt_observatory.flows.errors import PromotionLockTimeout

LEASE_TAG = "observatory.promotion.lease"
_UNIQUE_CLASH = re.compile(r"unique|duplicate", re.IGNORECASE)


def _read(client: MlflowClient, model: str) -> dict | None:
    raw = client.get_registered_model(model).tags.get(LEASE_TAG)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _write(client: MlflowClient, model: str, value: str) -> bool:
    """Write the lease tag; False when a concurrent writer's insert of the same tag won.

    The SQL store sets a tag by select-then-insert, so two first writes at once make one of them
    fail on the table's unique key (PostgreSQL, MySQL, SQLite each word it differently): that
    writer lost the race exactly as if its write had been overwritten.
    """
    try:
        client.set_registered_model_tag(model, LEASE_TAG, value)
    except MlflowException as e:
        if not _UNIQUE_CLASH.search(str(e)):
            raise
        logger.debug("registry lease on {}: a concurrent writer got there first ({})", model, e.error_code)
        return False
    return True


def acquire(
    client: MlflowClient, model: str, holder: str, ttl_s: float, settle_s: float, timeout_s: float
) -> str:
    """Take the alias lease of ``model``; return its token. Raise :class:`PromotionLockTimeout`."""
    token = f"{holder}/{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout_s
    while True:
        lease = _read(client, model)
        # A lease of the same holder is a retry of ours whose release never reached the registry.
        if lease is None or lease.get("expires", 0) < time.time() or lease.get("holder") == holder:
            value = json.dumps({"holder": holder, "token": token, "expires": time.time() + ttl_s})
            if _write(client, model, value):
                time.sleep(settle_s)
                lease = _read(client, model)
                if lease is not None and lease.get("token") == token:
                    logger.debug("registry lease on {} taken by {}", model, token)
                    return token
        if time.monotonic() > deadline:
            owner = (lease or {}).get("token", "?")
            raise PromotionLockTimeout(
                f"another promotion of {model!r} ({owner}) held the registry lease for more than {timeout_s:.0f}s; "
                f"it expires by itself after its TTL, or delete tag {LEASE_TAG!r} on the registered model"
            )
        time.sleep(0.1 + random.random() * 0.3)


def release(client: MlflowClient, model: str, token: str) -> None:
    """Drop the lease if it is still ours (it expires by itself otherwise)."""
    current = _read(client, model)
    if current is not None and current.get("token") == token:
        client.delete_registered_model_tag(model, LEASE_TAG)


@contextmanager
def held(client: MlflowClient, model: str, token: str) -> Iterator[None]:
    """Keep the lease ``token`` (from :func:`acquire`) for the body of the ``with``, then release it."""
    try:
        yield
    finally:
        try:
            release(client, model, token)
        except Exception as e:  # it expires after its TTL; never mask the body's outcome
            logger.warning("registry lease on {} not released ({}); it expires by itself", model, e)
