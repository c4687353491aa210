"""vLLM's own metrics: the fake exporter serves the names the dashboards read (those of vLLM 0.10),
our scrape configuration's ``vllm`` job brings them into a real Prometheus, and every vLLM panel of
the inference dashboard returns data there. The Collector option that scrapes vLLM is consistent."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards.otelcol import collector_config, problems
from gpt_observatory.dashboards.scrape import VLLM_JOB, VLLM_SCRAPED, scrape_config
from gpt_observatory.dashboards.verify import evaluate, live_queries, query, report
from tests import components
from tests.dashboards.conftest import prometheus_with
from tests.dashboards.fake_vllm import MODEL, FakeVllm


@contextlib.contextmanager
def _prometheus_scraping_vllm(workdir: Path, target: str) -> Iterator[components.Service]:
    """A real Prometheus with our scrape configuration, only its ``vllm`` job, every second."""
    config = scrape_config(gateway=[], gpu=[], pushgateway=[], collector=[], vllm=[target], interval="1s",
                           rule_files=())
    with prometheus_with(workdir, config) as svc:
        yield svc


def _vllm_queries():
    return [lq for lq in live_queries() if VLLM_SCRAPED.key in lq.needs]


def test_the_fake_serves_every_vllm_series_the_dashboards_know_with_vllms_labels():
    fake = FakeVllm()
    samples = [smp for family in text_string_to_metric_families(fake.exposition().decode())
               for smp in family.samples]
    served = {smp.name for smp in samples}
    assert set(s.VLLM_SERIES) <= served, set(s.VLLM_SERIES) - served
    assert all(smp.labels.get(s.VLLM_MODEL) == MODEL and smp.labels.get(s.VLLM_ENGINE) == "0"
               for smp in samples if smp.name in s.VLLM_SERIES)
    usage = next(smp.value for smp in samples if smp.name == s.VLLM_KV_CACHE_USAGE)
    assert 0 <= usage <= 1


def test_the_vllm_panels_read_only_vllm_series_and_cover_queue_prefill_decode_kv_cache_and_preemptions():
    queries = _vllm_queries()
    assert {lq.where.split(" query")[0] for lq in queries} == {
        'inference: panel "vLLM mean time per request: queue, prefill, decode"',
        'inference: panel "vLLM p95 queue, prefill and decode time"',
        'inference: panel "vLLM requests running and waiting"',
        'inference: panel "vLLM KV-cache usage"',
        'inference: panel "vLLM preemptions"',
        'inference: panel "vLLM tokens per second: prompt and generation"',
    }
    read = " ".join(lq.expr for lq in queries)
    for series in (s.VLLM_QUEUE_TIME, s.VLLM_PREFILL_TIME, s.VLLM_DECODE_TIME, s.VLLM_KV_CACHE_USAGE,
                   s.VLLM_PREEMPTIONS, s.VLLM_RUNNING, s.VLLM_WAITING):
        assert series in read, series


def test_every_vllm_panel_returns_data_from_a_real_prometheus_scraping_the_fake(tmp_path):
    queries = _vllm_queries()
    with FakeVllm() as fake, _prometheus_scraping_vllm(tmp_path / "prom", fake.target) as prom:
        up = f'{s.UP}{{{s.JOB}="{VLLM_JOB}"}}'
        components.wait_for(lambda: any(r["value"][1] == "1" for r in query(prom.url, up)), 30, what="vllm job up")
        # rate() needs two samples of a counter in its window: wait for a few more scrapes.
        probe = f"rate({s.VLLM_PREEMPTIONS}[1m]) > 0"
        components.wait_for(lambda: query(prom.url, probe), 30, what=probe)
        started = time.monotonic()
        outcomes = evaluate(prom.url, queries)
        print(f"{len(queries)} vLLM queries evaluated in {time.monotonic() - started:.2f} s")
    rep = report(outcomes, happened={VLLM_SCRAPED.key})
    print("\n".join(rep.lines))
    assert not rep.unexpected, "\n".join(f"{o.query.where}: {o.error or 'no data'}\n  {o.query.expr}"
                                         for o in rep.unexpected)
    assert all(o.samples == 1 for o in outcomes)  # one series per model (the fake serves one)


def test_the_collector_option_scrapes_vllm_into_the_prometheus_exporter():
    assert "prometheus/vllm" not in collector_config()["receivers"]  # off in the committed config
    config = collector_config(vllm_targets=("vllm:8001",))
    assert problems(config) == []
    scrape = config["receivers"]["prometheus/vllm"]["config"]["scrape_configs"]
    assert [(j["job_name"], j["static_configs"][0]["targets"]) for j in scrape] == [(VLLM_JOB, ["vllm:8001"])]
    pipeline = config["service"]["pipelines"]["metrics/vllm"]
    assert pipeline["receivers"] == ["prometheus/vllm"] and pipeline["exporters"] == ["prometheus"]
    assert pipeline["processors"][0] == "memory_limiter" and pipeline["processors"][-1] == "batch"


def test_the_committed_scrape_config_has_a_vllm_job():
    from gpt_observatory.dashboards.artefacts import ROOT

    jobs = {j["job_name"]: j for j in yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())[
        "scrape_configs"]}
    assert jobs[VLLM_JOB]["static_configs"][0]["targets"] == ["127.0.0.1:8001"]
    assert jobs[VLLM_JOB]["metrics_path"] == "/metrics"
