"""Inference: latency (request, TTFT, TPOT), throughput, tokens per tenant, the serving model
version, the canary (champion vs challenger: the figures the canary flow judges), energy per output
token, the same signals when proxying an upstream server, and a vLLM upstream's own engine metrics
(queue, prefill and decode time, KV-cache usage, preemptions) to say whether a slow first token was
queueing or prefill."""

from __future__ import annotations

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Board, Panel, Row, q
from gpt_observatory.dashboards.boards._common import GPU_VAR, JOB_VAR, MODEL_VAR, TENANT_VAR
from gpt_observatory.dashboards.query import RANGE, agg, quantile, rate, ratio, sel
from gpt_observatory.dashboards.scrape import VLLM_SCRAPED
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


_VLLM_PHASES = (("queue", s.VLLM_QUEUE_TIME), ("prefill", s.VLLM_PREFILL_TIME), ("decode", s.VLLM_DECODE_TIME))
_VLLM_LEGEND = f"{{{{{s.VLLM_MODEL}}}}}"


def _vllm_quantile(p: float, histogram: str) -> str:
    by = (s.VLLM_MODEL, s.LE)
    return f"histogram_quantile({p}, {rate(histogram + '_bucket', s.BY_VLLM_MODEL, by=by)})"


def _vllm_row() -> Row:
    """vLLM's own metrics beside ours: where an upstream request's time went, and why."""
    by = (s.VLLM_MODEL,)

    def mean(histogram: str) -> str:
        return (f"{rate(histogram + '_sum', s.BY_VLLM_MODEL, by=by)} / "
                f"{rate(histogram + '_count', s.BY_VLLM_MODEL, by=by)}")

    def gauge(series: str, fn: str = "sum") -> str:
        return agg(fn, sel(series, s.BY_VLLM_MODEL), by)

    return Row("vLLM engine (the upstream's own metrics)", (
        Panel("vLLM mean time per request: queue, prefill, decode",
              tuple(q(mean(h), f"{phase} {_VLLM_LEGEND}") for phase, h in _VLLM_PHASES),
              unit="s", width=8, stack=True, needs=VLLM_SCRAPED,
              description="Where a finished request's time went inside vLLM: waiting to be scheduled, "
                          "prefilling the prompt, decoding. A slow TTFT with a tall queue band is queueing."),
        Panel("vLLM p95 queue, prefill and decode time",
              (*(q(_vllm_quantile(0.95, h), f"{phase} {_VLLM_LEGEND}") for phase, h in _VLLM_PHASES),
               q(_vllm_quantile(0.95, s.VLLM_TTFT), f"TTFT {_VLLM_LEGEND}")),
              unit="s", width=8, needs=VLLM_SCRAPED),
        Panel("vLLM requests running and waiting",
              (q(gauge(s.VLLM_RUNNING), f"running {_VLLM_LEGEND}"), q(gauge(s.VLLM_WAITING), f"waiting {_VLLM_LEGEND}")),
              width=8, needs=VLLM_SCRAPED,
              description="Waiting grows when the engine has no room (KV cache full or max_num_seqs reached)."),
        Panel("vLLM KV-cache usage", (q(gauge(s.VLLM_KV_CACHE_USAGE, "max"), _VLLM_LEGEND),),
              unit="percentunit", width=8, needs=VLLM_SCRAPED,
              description="Fraction of KV-cache blocks in use (the fullest engine). Near 1, requests are preempted."),
        Panel("vLLM preemptions", (q(rate(s.VLLM_PREEMPTIONS, s.BY_VLLM_MODEL, by=by), _VLLM_LEGEND),),
              unit="reqps", width=8, needs=VLLM_SCRAPED,
              description="Requests evicted to free KV cache and recomputed later: latency spikes, not errors."),
        Panel("vLLM tokens per second: prompt and generation",
              (q(rate(s.VLLM_PROMPT_TOKENS, s.BY_VLLM_MODEL, by=by), f"prompt {_VLLM_LEGEND}"),
               q(rate(s.VLLM_GENERATION_TOKENS, s.BY_VLLM_MODEL, by=by), f"generation {_VLLM_LEGEND}")),
              width=8, needs=VLLM_SCRAPED),
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
            _vllm_row(),
        ),
    )
