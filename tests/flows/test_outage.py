"""MLflow stopped in the middle of a promotion: the flow retries, then fails saying what
happened, and the champion alias is untouched."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from gpt_observatory.flows.stores import client_for
from tests import components
from tests.flows.conftest import ModelFactory, in_thread


def test_mlflow_stopped_mid_promotion_fails_after_retries_and_keeps_champion(
    variants, prefect_server, tmp_path, monkeypatch
) -> None:
    from gpt_observatory.flows import history
    from gpt_observatory.flows.errors import RegistryUnavailable
    from gpt_observatory.flows.lease import LEASE_TAG
    from gpt_observatory.flows.promotion import promote

    # MLflow's own HTTP retries would stretch this to minutes; the flow's task retries remain.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    workdir = tmp_path / "mlflow"
    with components.mlflow_server(workdir) as server:
        factory = ModelFactory(server.url, variants, {})
        model, (v1, v2) = factory.new_model("weak", "strong", prefix="outage")
        client = client_for(server.url)
        client.set_registered_model_alias(model, "champion", v1)
        # A long settle window makes "mid-promotion" a moment the test can hit: after the lease
        # is written, before the champion is read or moved.
        overrides = factory.overrides(retries=2, retry_delay_s=0.2, lease_settle_s=3.0)
        with ThreadPoolExecutor(1) as pool:
            future = in_thread(pool, promote, model_name=model, version=v2, overrides=overrides)
            components.wait_for(lambda: LEASE_TAG in client.get_registered_model(model).tags,
                                timeout=120, interval=0.05, what="the promotion to take its lease")
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)
            with pytest.raises(RegistryUnavailable) as failure:
                future.result(timeout=300)

    message = str(failure.value)
    assert f"MLflow at {server.url} did not answer while taking the registry lease (3 attempt(s)" in message
    assert "champion alias is as it was" in message
    store = client_for(f"sqlite:///{workdir / 'mlflow.db'}")  # the server's own database
    assert str(store.get_model_version_by_alias(model, "champion").version) == v1
    assert history.read(store, model) == []
