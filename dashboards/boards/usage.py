"""Usage and cost (issue 17): spend per tenant and model, tokens, budgets, and the usage ledger's health.

Spend is ``observatory.usage.cost``, counted in integer micro-units when a priced request is settled
(the same cost the usage ledger records in its row), shown here in currency units: per hour, and in the
dashboard's time range. A counter is monitoring, not billing (it restarts with the process, is sampled
by the scraper and increase() extrapolates): the bill is ``observatory usage`` on the ledger, which these
panels track. Budget use is what each process last read from the shared budget store (``max`` across
processes: the latest). The query builders are shared with the metering rules (``dashboards/metering_rules.py``).

GPU energy is what ``telemetry/gpu_energy.py`` splits from each GPU's NVML energy counter between the in-process
generations open on it (``observatory.gen_ai.server.energy`` and ``.gpu.time``, by tenant, model and version) and
what it read while none was (``observatory.gpu.energy.idle``): a model behind the upstream (proxy) backend has none.
"""

from __future__ import annotations

from typing import Final

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Board, Panel, Row, Variable, q
from gpt_observatory.dashboards.boards._common import JOB_VAR, TENANT_VAR
from gpt_observatory.dashboards.query import RANGE, RATE, agg, rate, sel
from gpt_observatory.telemetry import names

COST: Final = s.total(names.USAGE_COST)
MICRO: Final = 1_000_000  # the cost's and budgets' unit ({micro}): micro-units of the currency
SPENT: Final = s.gauge(names.BUDGET_SPENT)
LIMIT: Final = s.gauge(names.BUDGET_LIMIT)
BUDGET_REFUSED: Final = f'{s.REJECTION_REASON}="{names.REJECTION_BUDGET}"'
SPOOL_ROWS: Final = s.gauge(names.LEDGER_SPOOL_ROWS)
LAG: Final = s.gauge(names.LEDGER_LAG)
PER_INSTANCE: Final = (s.JOB, s.INSTANCE)
ENERGY: Final = s.total(names.GEN_AI_SERVER_ENERGY)
GPU_TIME: Final = s.total(names.GEN_AI_SERVER_GPU_TIME)
IDLE: Final = s.total(names.GPU_ENERGY_IDLE)
OUTPUT: Final = f'{s.TOKEN_TYPE}="{names.GEN_AI_TOKEN_TYPE_OUTPUT}"'
VERSIONED: Final = (s.TENANT, s.REQUEST_MODEL, s.MODEL_VERSION)

MODEL_VAR: Final = Variable("model", "Model", f"label_values({COST}{{{s.BY_JOB}}}, {s.CATALOG_MODEL})")


def spend(*matchers: str, by: tuple[str, ...], window: str = RATE, fn: str = "rate", per: int = 1) -> str:
    """Spend in currency units (``per`` seconds of the rate, or the window's increase), per ``by``."""
    scale = f" * {per}" if per != 1 else ""
    return f"{rate(COST, *matchers, by=by, window=window, fn=fn)}{scale} / {MICRO}"


def budget_used(*matchers: str, by: tuple[str, ...]) -> str:
    """Share of each tenant's budget charged in its period (the latest read of any process); tenants
    with a budget only."""
    return f"{agg('max', sel(SPENT, *matchers), by)} / ({agg('max', sel(LIMIT, *matchers), by)} > 0)"


def joules_per_token(*matchers: str, by: tuple[str, ...]) -> str:
    """Attributed GPU energy over the output tokens metered at the gateways that have any (a gateway without an
    in-process model on a GPU, e.g. a proxy, has no energy series: its tokens are left out), per ``by``."""
    tokens = f"rate({sel(s.total(names.GATEWAY_TOKENS), *matchers, OUTPUT)}[{RATE}])"
    on_gpu = agg("sum", f"{tokens} and on ({', '.join(PER_INSTANCE)}) {sel(ENERGY, s.BY_JOB)}", by)
    return f"{rate(ENERGY, *matchers, by=by)} / ({on_gpu} > 0)"


def board() -> Board:
    per_tenant = (s.BY_JOB, s.BY_TENANT)
    costed = (*per_tenant, s.BY_CATALOG_MODEL)
    tenant, model, currency = f"{{{{{s.TENANT}}}}}", f"{{{{{s.CATALOG_MODEL}}}}}", f"{{{{{s.CURRENCY}}}}}"
    instance = f"{{{{{s.INSTANCE}}}}}"
    tokens = s.total(names.GATEWAY_TOKENS)
    rejections = s.total(names.GATEWAY_REJECTIONS)
    version = f"{tenant} {{{{{s.REQUEST_MODEL}}}}} v{{{{{s.MODEL_VERSION}}}}}"
    return Board(
        uid="observatory-usage",
        title="Observatory / Usage and cost",
        description="Spend per tenant and model, tokens, GPU energy and GPU-seconds per tenant (in-process models), "
                    "budgets used, budget refusals, and the usage ledger: rows written, shipped and dropped, spool "
                    "backlog and lag.",
        variables=(JOB_VAR, TENANT_VAR, MODEL_VAR),
        rows=(
            Row("Spend", (
                Panel("Spend per tenant (per hour)",
                      (q(spend(*costed, by=(s.TENANT, s.CURRENCY), per=3600), f"{tenant} ({currency})"),),
                      stack=True, needs=events.PRICED,
                      description="What the tenants' priced requests cost, in currency units per hour, counted when "
                                  "each request is settled (its real usage at the price in force; the ledger row's "
                                  "cost). Tenants past the tracked limit on the default tier are summed as "
                                  f"{names.USAGE_TENANT_OTHER}."),
                Panel("Spend per tenant in the time range",
                      (q(spend(*costed, by=(s.TENANT, s.CURRENCY), window=RANGE, fn="increase")),),
                      kind="table", needs=events.PRICED,
                      description="The running total over the dashboard's range, in currency units (Prometheus "
                                  "extrapolates to the range's ends: `observatory usage` on the ledger gives the "
                                  "exact bill)."),
                Panel("Spend per model (per hour)",
                      (q(spend(*costed, by=(s.CATALOG_MODEL, s.CURRENCY), per=3600), f"{model} ({currency})"),),
                      stack=True, needs=events.PRICED,
                      description="Spend by catalog model (the prices file's names), in currency units per hour."),
                Panel("Spend per model in the time range",
                      (q(spend(*costed, by=(s.CATALOG_MODEL, s.CURRENCY), window=RANGE, fn="increase")),),
                      kind="table", needs=events.PRICED),
            )),
            Row("Tokens", (
                Panel("Tokens per second per tenant (in/out)",
                      (q(rate(tokens, *per_tenant, by=(s.TENANT, s.TOKEN_TYPE)), f"{tenant} {{{{{s.TOKEN_TYPE}}}}}"),),
                      description="Metered input and output tokens, priced or not."),
                Panel("Tokens per tenant in the time range",
                      (q(rate(tokens, *per_tenant, by=(s.TENANT, s.TOKEN_TYPE), window=RANGE, fn="increase")),),
                      kind="table"),
            )),
            Row("GPU energy", (
                Panel("GPU energy per output token per tenant",
                      (q(joules_per_token(*per_tenant, by=(s.TENANT,)), tenant),), unit="joule", width=8,
                      needs=events.GPU,
                      description="Joules of GPU energy per output token, for in-process models only (the gateway "
                                  "runs the model on its own GPU): the energy attributed to the tenant's generations "
                                  "over the output tokens metered for it at the gateways with such a model. A model "
                                  "behind the upstream (proxy) backend has no energy: a gateway that only proxies is "
                                  "left out, but a tenant's proxied tokens at a gateway that also runs a model in "
                                  "process count in the denominator."),
                Panel("GPU-seconds per second per tenant and model version",
                      (q(rate(GPU_TIME, *per_tenant, by=VERSIONED), version),), unit="short", width=8, stack=True,
                      needs=events.GPU,
                      description="GPU time attributed to each tenant's in-process generations (each sampled "
                                  "interval's seconds split by the tokens each generation made in it), per model and "
                                  "registry version: 1 is one GPU busy for that tenant all the time."),
                Panel("GPU energy attributed and idle",
                      (q(rate(ENERGY, s.BY_JOB, by=PER_INSTANCE), f"attributed {instance}"),
                       q(rate(IDLE, s.BY_JOB, by=PER_INSTANCE), f"idle {instance}")),
                      unit="watt", width=8, stack=True, needs=events.GPU,
                      description="Power (J/s) read from the GPUs' NVML energy counters, attributed to in-process "
                                  "generations or, while none was open, idle (attributed to nobody): together, what "
                                  "the counters rose by. Idle power high beside attributed is a GPU paid for and "
                                  "unused."),
                Panel("GPU-seconds per tenant and model version in the time range",
                      (q(rate(GPU_TIME, *per_tenant, by=VERSIONED, window=RANGE, fn="increase")),), kind="table",
                      needs=events.GPU),
                Panel("GPU energy per tenant in the time range",
                      (q(rate(ENERGY, *per_tenant, by=VERSIONED, window=RANGE, fn="increase")),), kind="table",
                      unit="joule", needs=events.GPU,
                      description="Joules attributed to each tenant's in-process generations over the dashboard's "
                                  "range, per model and version (the ledger rows' gpu_joules, as a counter)."),
            )),
            Row("Budgets", (
                Panel("Budget used per tenant",
                      (q(budget_used(*per_tenant, by=(s.TENANT,)), tenant),), unit="percentunit", kind="bargauge",
                      needs=events.BUDGET,
                      description="Share of each tenant's budget charged in its current period, open reservations "
                                  "included. BudgetNearlySpent fires at 80%, BudgetExhausted at 100% (or on a refusal)."),
                Panel("Requests refused for their budget",
                      (q(rate(rejections, *per_tenant, BUDGET_REFUSED, by=(s.TENANT,)), tenant),), unit="reqps",
                      needs=events.BUDGET_REFUSED,
                      description="429 insufficient_quota: the request's worst case did not fit what is left of the "
                                  "tenant's budget; it resets at the period's end."),
            )),
            Row("Usage ledger", (
                Panel("Ledger rows written and shipped",
                      (q(rate(s.total(names.LEDGER_ROWS_WRITTEN), s.BY_JOB, by=PER_INSTANCE), f"written {instance}"),
                       q(rate(s.total(names.LEDGER_ROWS_SHIPPED), s.BY_JOB, by=PER_INSTANCE), f"shipped {instance}")),
                      unit="rowsps", width=8, needs=events.LEDGER,
                      description="Rows written to each gateway's local spool (durable from then on) and shipped to "
                                  "the ledger store: the two match while the store keeps up."),
                Panel("Ledger rows dropped by reason",
                      (q(rate(s.total(names.LEDGER_ROWS_DROPPED), s.BY_JOB, by=(s.INSTANCE, s.LEDGER_REASON)),
                         f"{instance} {{{{{s.LEDGER_REASON}}}}}"),), unit="rowsps", width=8,
                      needs=events.LEDGER_DROPPED,
                      description="Rows lost to the ledger: the spool could not take them (full disk, "
                                  "ledger_spool_max_mb, I/O error) or the ledger had closed. LedgerRowsDropped fires "
                                  "on any."),
                Panel("Ledger ship failures",
                      (q(rate(s.total(names.LEDGER_SHIP_FAILURES), s.BY_JOB, by=PER_INSTANCE), instance),),
                      unit="short", width=8, needs=events.LEDGER_SHIP_FAILED,
                      description="Batches per second the ledger store refused or could not be reached for; they stay "
                                  "in the spool and are retried (backing off to 5 s)."),
                Panel("Ledger spool backlog",
                      (q(agg("sum", sel(SPOOL_ROWS, s.BY_JOB), PER_INSTANCE), instance),), unit="short",
                      needs=events.LEDGER,
                      description="Rows in each gateway's spool not yet shipped: near zero while the store keeps up; "
                                  "LedgerSpoolGrowing fires when it rises for 10 minutes."),
                Panel("Ledger lag",
                      (q(agg("max", sel(LAG, s.BY_JOB), PER_INSTANCE), instance),), unit="s", needs=events.LEDGER,
                      description="Age of the oldest row not yet shipped (0 when the spool is empty): how far the "
                                  "ledger store, and `observatory usage`, are behind. LedgerLagHigh fires past a minute."),
            )),
        ),
    )
