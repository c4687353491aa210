"""Inference: latency (request, TTFT, TPOT), throughput, tokens per tenant, the serving model
version, the canary (champion vs challenger: the figures the canary flow judges), energy per output
token, and the same signals when proxying an upstream server."""

from __future__ import annotations

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Board, Panel, Row, q
from gpt_observatory.dashboards.boards._common import GPU_VAR, JOB_VAR, MODEL_VAR, TENANT_VAR
from gpt_observatory.dashboards.query import RANGE, quantile, rate, ratio, sel
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.names import Metric, prometheus_series

_LATENCY = (
    ("Request duration", names.GEN_AI_SERVER_REQUEST_DURATION, names.GEN_AI_CLIENT_OPERATION_DURATION),
    ("Time to first token", names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, names.GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK),
    ("Time per output token", names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN, names.GEN_AI_CLIENT_TIME_PER_OUTPUT_CHUNK),
)


def _percentiles(title: str, metric: Metric, *matchers: str, needs: events.Event | None = None) -> Panel:
    return Panel(title, tuple(
        q(quantile(p, metric, s.BY_JOB, s.BY_MODEL, *matchers, by=(s.REQUEST_MODEL,)),
          f"p{round(p * 100)} {{{{{s.REQUEST_MODEL}}}}}")
        for p in (0.5, 0.95)
    ), unit="s", needs=needs, width=8)


def _canary_row(served: str, output: str) -> Row:
    """Champion and challenger side by side, per version and role: what ``flows/canary.py`` reads."""
    side = (s.MODEL_VERSION, s.MODEL_ROLE)
    legend = f"{{{{{s.MODEL_ROLE}}}}} v{{{{{s.MODEL_VERSION}}}}}"
    seconds = prometheus_series(names.GEN_AI_SERVER_REQUEST_DURATION)[1]  # the histogram's _sum
    share = (f"{rate(served, s.BY_JOB, s.BY_MODEL, by=side)} / ignoring({s.MODEL_VERSION}, {s.MODEL_ROLE}) "
             f"group_left {rate(served, s.BY_JOB, s.BY_MODEL)}")
    return Row("Canary: champion vs challenger", (
        Panel("Traffic share by role", (q(share, legend),), unit="percentunit", width=8, stack=True,
              description="Share of generations each side served. The challenger's drops to 0 when the canary "
                          "flow ends the canary (it deletes the challenger alias)."),
        Panel("Error rate by role", (q(ratio(served, f'{s.ERROR_TYPE}!=""', s.BY_JOB, s.BY_MODEL, by=side), legend),),
              unit="percentunit", width=8, description="Generations ended by an error, per version and role."),
        Panel("Output tokens per second of generation by role",
              (q(f"{rate(output, s.BY_JOB, s.BY_MODEL, by=side)} / {rate(seconds, s.BY_JOB, s.BY_MODEL, by=side)}",
                 legend),), width=8,
              description="Output tokens over the time spent generating: a speed that does not depend on the share."),
        Panel("p95 request duration by role",
              (q(quantile(0.95, names.GEN_AI_SERVER_REQUEST_DURATION, s.BY_JOB, s.BY_MODEL, by=side), legend),),
              unit="s", width=12),
        Panel("p95 time to first token by role",
              (q(quantile(0.95, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, s.BY_JOB, s.BY_MODEL, by=side), legend),),
              unit="s", width=12, description="Streamed generations only."),
    ))


def board() -> Board:
    output = s.total(names.GEN_AI_OUTPUT_TOKENS)
    served = s.count(names.GEN_AI_SERVER_REQUEST_DURATION)
    model = f"{{{{{s.REQUEST_MODEL}}}}}"
    version = f"{{{{{s.MODEL_VERSION}}}}}"
    energy = rate(s.total(names.HW_ENERGY), s.BY_GPU)
    return Board(
        uid="observatory-inference",
        title="Observatory / Inference",
        description="GenAI serving: latency, throughput, tokens, model versions and energy per token.",
        variables=(JOB_VAR, MODEL_VAR, TENANT_VAR, GPU_VAR),
        rows=(
            Row("Latency (served in process)", tuple(_percentiles(t, server) for t, server, _ in _LATENCY)),
            Row("Throughput and tokens", (
                Panel("Output tokens per second by model version",
                      (q(rate(output, s.BY_JOB, s.BY_MODEL, by=(s.REQUEST_MODEL, s.MODEL_VERSION)),
                         f"{model} v{version}"),), width=8),
                Panel("Tokens per second per tenant",
                      (q(rate(s.total(names.GATEWAY_TOKENS), s.BY_JOB, s.BY_TENANT, by=(s.TENANT, s.TOKEN_TYPE)),
                         f"{{{{{s.TENANT}}}}} {{{{{s.TOKEN_TYPE}}}}}"),), width=8),
                Panel("Tokens per request", tuple(
                    q(quantile(p, names.GEN_AI_SERVER_TOKEN_USAGE, s.BY_JOB, s.BY_MODEL, by=(s.TOKEN_TYPE,)),
                      f"p{round(p * 100)} {{{{{s.TOKEN_TYPE}}}}}") for p in (0.5, 0.95)
                ), width=8),
            )),
            Row("Serving model", (
                Panel("Requests per model version in the time range",
                      (q(rate(served, s.BY_JOB, s.BY_MODEL, by=(s.REQUEST_MODEL, s.MODEL_VERSION, s.MODEL_ROLE),
                              window=RANGE, fn="increase")),), kind="table", width=8,
                      description="Which registry version (and role) answered the requests."),
                Panel("Request duration by model version",
                      (q(quantile(0.95, names.GEN_AI_SERVER_REQUEST_DURATION, s.BY_JOB, s.BY_MODEL,
                                  by=(s.MODEL_VERSION,)), f"p95 v{version}"),), unit="s", width=8),
                Panel("Generations ended by an error",
                      (q(rate(served, s.BY_JOB, s.BY_MODEL, f'{s.ERROR_TYPE}!=""', by=(s.ERROR_TYPE,)),
                         f"{{{{{s.ERROR_TYPE}}}}}"),), unit="reqps", width=8, needs=events.INFERENCE_ERROR),
                Panel("Model hot-swaps",
                      (q(rate(s.total(names.MODEL_SWAPS), s.BY_JOB, by=(s.MODEL_NAME, s.MODEL_VERSION),
                              window=RANGE, fn="increase")),), kind="table", width=12, needs=events.HOT_SWAP),
                Panel("Registry poll errors",
                      (q(rate(s.total(names.MODEL_REGISTRY_ERRORS), s.BY_JOB, by=(s.MODEL_NAME,)),
                         f"{{{{{s.MODEL_NAME}}}}}"),), width=12, needs=events.REGISTRY_ERROR),
            )),
            _canary_row(served, output),
            Row("Energy", (
                Panel("Energy per output token",
                      (q(f"{energy} / {rate(output, s.BY_JOB, s.BY_MODEL)}", "J/token"),), unit="joule",
                      description="Rate of the GPUs' energy counter over the rate of output tokens (never per request)."),
                Panel("GPU power while serving",
                      (q(f"sum({sel(s.gauge(names.HW_POWER), s.BY_GPU)})", "W"),), unit="watt"),
            )),
            Row("Proxy mode (upstream backend, the gateway as a GenAI client)", (
                *(_percentiles(f"Upstream {t.lower()}", client, needs=events.UPSTREAM) for t, _, client in _LATENCY),
                Panel("Upstream tokens per request",
                      (q(quantile(0.95, names.GEN_AI_CLIENT_TOKEN_USAGE, s.BY_JOB, s.BY_MODEL, by=(s.TOKEN_TYPE,)),
                         f"p95 {{{{{s.TOKEN_TYPE}}}}}"),), needs=events.UPSTREAM, width=12),
                Panel("Upstream failures by error type",
                      (q(rate(s.count(names.GEN_AI_CLIENT_OPERATION_DURATION), s.BY_JOB, s.BY_MODEL,
                              f'{s.ERROR_TYPE}!=""', by=(s.ERROR_TYPE,)), f"{{{{{s.ERROR_TYPE}}}}}"),),
                      unit="reqps", needs=events.UPSTREAM, width=12,
                      description="Upstream errors and timeouts (answered 502/504)."),
            )),
        ),
    )
