"""Overview: the golden signals of the whole stack (traffic, errors, latency, saturation)."""

from __future__ import annotations

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Board, Panel, Row, q
from gpt_observatory.dashboards.boards._common import JOB_VAR
from gpt_observatory.dashboards.query import agg, failed_ratio, quantile, rate, sel
from gpt_observatory.telemetry import names

HTTP = names.HTTP_SERVER_REQUEST_DURATION


def board() -> Board:
    requests = s.count(HTTP)
    return Board(
        uid="observatory-overview",
        title="Observatory / Overview",
        description="Golden signals of the gateway, inference and GPUs.",
        variables=(JOB_VAR,),
        rows=(
            Row("Traffic and errors", (
                Panel("Request rate", (q(rate(requests, s.BY_JOB, s.API_ROUTES, by=(s.JOB,)), "{{job}}"),),
                      unit="reqps", description="API requests per second (OpenAI-compatible routes)."),
                Panel("Responses by status code",
                      (q(rate(requests, s.BY_JOB, s.API_ROUTES, by=(s.STATUS_CODE,)), f"{{{{{s.STATUS_CODE}}}}}"),),
                      unit="reqps", stack=True),
                Panel("Server error ratio",
                      (q(failed_ratio(requests, s.BY_JOB, s.API_ROUTES, by=(s.JOB,)), "{{job}}"),),
                      unit="percentunit", description="Share of API requests answered with a 5xx status or failed "
                                                      "after their status went out (a stream cut or truncated)."),
                Panel("Rejections by reason",
                      (q(rate(s.total(names.GATEWAY_REJECTIONS), s.BY_JOB, by=(s.REJECTION_REASON,)),
                         f"{{{{{s.REJECTION_REASON}}}}}"),), unit="reqps", stack=True),
            )),
            Row("Latency", (
                Panel("Request duration", tuple(
                    q(quantile(p, HTTP, s.BY_JOB, s.API_ROUTES), f"p{round(p * 100)}") for p in (0.5, 0.95, 0.99)
                ), unit="s"),
                Panel("Time to first token", tuple(
                    q(quantile(p, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, s.BY_JOB), f"p{round(p * 100)}")
                    for p in (0.5, 0.95)
                ), unit="s"),
            )),
            Row("Throughput and saturation", (
                Panel("Output tokens per second",
                      (q(rate(s.total(names.GEN_AI_OUTPUT_TOKENS), s.BY_JOB, by=(s.REQUEST_MODEL,)),
                         f"{{{{{s.REQUEST_MODEL}}}}}"),), unit="short"),
                Panel("Active requests",
                      (q(agg("sum", sel(s.gauge(names.HTTP_SERVER_ACTIVE_REQUESTS), s.BY_JOB), (s.JOB,)), "{{job}}"),)),
                Panel("GPU utilisation",
                      (q(agg("avg", sel(s.gauge(names.HW_GPU_UTILIZATION), s.BY_JOB, f'{s.GPU_TASK}="general"'),
                             (s.HW_ID,)), f"{{{{{s.HW_ID}}}}}"),), unit="percentunit"),
                Panel("GPU memory used",
                      (q(agg("max", sel(s.gauge(names.HW_GPU_MEMORY_UTILIZATION), s.BY_JOB), (s.HW_ID,)),
                         f"{{{{{s.HW_ID}}}}}"),), unit="percentunit"),
            )),
            Row("Health", (
                Panel("Alerts pending or firing",
                      (q(agg("count", sel(s.ALERTS), (s.JOB, "alertname", "alertstate", "severity"))),),
                      kind="table", needs=events.ALERT_ACTIVE),
                Panel("Scrape targets up", (q(sel(s.UP, s.BY_JOB), "{{job}} {{instance}}"),), kind="table"),
            )),
        ),
    )
