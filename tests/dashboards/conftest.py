"""Fixtures of the dashboards area: a real Prometheus loaded with the committed rules and our
scrape configuration (pointed at the test's ports)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import yaml

from gpt_observatory.dashboards.artefacts import ROOT
from gpt_observatory.dashboards.rules import FLEET_GROUP, Alert, groups
from gpt_observatory.dashboards.scrape import RULE_FILE, scrape_config
from gpt_observatory.dashboards.verify import LiveQuery
from tests import components


def is_fleet(query: LiveQuery) -> bool:
    """Whether ``query`` is the fleet board's or a rule of the fleet group (proven by test_fleet.py,
    which runs a replica pool: the other live tests run none)."""
    rules = {f'alert "{r.alert}"' if isinstance(r, Alert) else f'record "{r.record}"'
             for g in groups() if g.name == FLEET_GROUP for r in g.rules}
    return query.where.startswith("fleet: ") or query.where in rules


@contextlib.contextmanager
def prometheus_for(workdir: Path, gateways: list[str], pushgateway: str) -> Iterator[components.Service]:
    """Prometheus scraping ``gateways`` and ``pushgateway`` every second with the committed
    ``alerts.yml`` (recording rules evaluated every second too)."""
    config = scrape_config(
        gateway=gateways, gpu=[], pushgateway=[pushgateway], collector=[], interval="1s",
        rule_files=(str(ROOT / "prometheus" / RULE_FILE),),
    )
    with prometheus_with(workdir, config) as svc:
        yield svc


@contextlib.contextmanager
def prometheus_with(workdir: Path, config: dict) -> Iterator[components.Service]:
    """A real Prometheus on a free loopback port with the scrape configuration ``config``."""
    port = components.free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = workdir / "prometheus.log"
    proc = components.start_process(
        [components.require_binary("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        log,
    )
    svc = components.Service(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        components.wait_http(svc.url + "/-/ready", timeout=60, proc=proc, log=log)
        yield svc
    finally:
        svc.stop()
