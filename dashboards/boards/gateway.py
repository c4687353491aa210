"""Gateway and auth: traffic per tenant, rejections by reason, rate-limit hits, auth outcomes."""

from __future__ import annotations

from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Board, Panel, Row, q
from gpt_observatory.dashboards.boards._common import JOB_VAR, TENANT_VAR
from gpt_observatory.dashboards.query import RANGE, failed_ratio, quantile, rate, ratio
from gpt_observatory.telemetry import names


def board() -> Board:
    requests = s.total(names.GATEWAY_REQUESTS)
    tokens = s.total(names.GATEWAY_TOKENS)
    rejections = s.total(names.GATEWAY_REJECTIONS)
    attempts = s.total(names.AUTH_ATTEMPTS)
    tenant = f"{{{{{s.TENANT}}}}}"
    return Board(
        uid="observatory-gateway",
        title="Observatory / Gateway and auth",
        description="Metered traffic per tenant, rejections, rate limits and authentication outcomes.",
        variables=(JOB_VAR, TENANT_VAR),
        rows=(
            Row("Traffic per tenant", (
                Panel("Requests per tenant", (q(rate(requests, s.BY_JOB, s.BY_TENANT, by=(s.TENANT,)), tenant),),
                      unit="reqps", stack=True),
                Panel("Responses per tenant and status",
                      (q(rate(requests, s.BY_JOB, s.BY_TENANT, by=(s.TENANT, s.STATUS_CODE)),
                         f"{tenant} {{{{{s.STATUS_CODE}}}}}"),), unit="reqps"),
                Panel("Tokens per second per tenant",
                      (q(rate(tokens, s.BY_JOB, s.BY_TENANT, by=(s.TENANT, s.TOKEN_TYPE)),
                         f"{tenant} {{{{{s.TOKEN_TYPE}}}}}"),)),
                Panel("Tokens per tenant in the time range",
                      (q(rate(tokens, s.BY_JOB, s.BY_TENANT, by=(s.TENANT, s.TOKEN_TYPE), window=RANGE,
                              fn="increase")),), kind="table",
                      description="Metered input and output tokens (what a bill is made of)."),
            )),
            Row("Rejections and rate limits", (
                Panel("Rejections by reason",
                      (q(rate(rejections, s.BY_JOB, s.BY_TENANT, by=(s.REJECTION_REASON,)),
                         f"{{{{{s.REJECTION_REASON}}}}}"),), unit="reqps", stack=True),
                Panel("Rate-limit hits per tenant",
                      (q(rate(rejections, s.BY_JOB, s.BY_TENANT, f'{s.REJECTION_REASON}="rate_limit"',
                              by=(s.TENANT,)), tenant),), unit="reqps",
                      description="Requests answered 429 (requests or tokens per minute exceeded)."),
                Panel("Rejected or failed share per tenant",
                      (q(failed_ratio(requests, s.BY_JOB, s.BY_TENANT, status="4..|5..", by=(s.TENANT,)),
                         tenant),), unit="percentunit",
                      description="Requests answered 4xx/5xx, or failed after a 200 went out (a cut stream)."),
                Panel("Request duration by route",
                      (q(quantile(0.95, names.HTTP_SERVER_REQUEST_DURATION, s.BY_JOB, by=(s.HTTP_ROUTE,)),
                         f"p95 {{{{{s.HTTP_ROUTE}}}}}"),), unit="s"),
            )),
            Row("Authentication", (
                Panel("Auth attempts by method and outcome",
                      (q(rate(attempts, s.BY_JOB, by=(s.AUTH_METHOD, s.AUTH_OUTCOME)),
                         f"{{{{{s.AUTH_METHOD}}}}} {{{{{s.AUTH_OUTCOME}}}}}"),), unit="reqps", stack=True),
                Panel("Auth failure ratio",
                      (q(ratio(attempts, f'{s.AUTH_OUTCOME}!="ok"', s.BY_JOB, by=(s.JOB,)), "{{job}}"),),
                      unit="percentunit", description="Share of credentials refused (any outcome but ok)."),
                Panel("Credential verification time",
                      (q(quantile(0.99, names.AUTH_DURATION, s.BY_JOB, by=(s.AUTH_METHOD,)),
                         f"p99 {{{{{s.AUTH_METHOD}}}}}"),), unit="s"),
                Panel("Refusals by outcome in the time range",
                      (q(rate(attempts, s.BY_JOB, f'{s.AUTH_OUTCOME}!="ok"', by=(s.AUTH_METHOD, s.AUTH_OUTCOME),
                              window=RANGE, fn="increase")),), kind="table"),
            )),
        ),
    )
