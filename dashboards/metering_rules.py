"""Alert rules of the metering (issue 17): tenant budgets and the usage ledger (groups of ``alerts.yml``).

Budgets: 80 % and 100 % spent, and a budget store that fails. Each gateway process reports the spend it
last read from the shared store: ``max`` across processes is the latest. A tenant at 100 % may be refused
before the ratio reaches 1 (a request is admitted only if its worst case fits), so BudgetExhausted also
fires on any budget refusal.

Ledger: a row the ledger could not write is a row missing from the bill, so any drop alerts at once; a
store that cannot take batches shows as ship failures, then as a spool that grows and a lag that rises
(the rows are safe in the spool meanwhile, and ship when the store is back).
"""

from __future__ import annotations

from typing import Final

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._rulespec import Alert, Group, Recording
from gpt_observatory.dashboards.boards import usage
from gpt_observatory.dashboards.query import agg, rate, sel
from gpt_observatory.telemetry import names

BUDGETS_GROUP: Final = "observatory-budgets"
BUDGET_USED: Final = "observatory:budget_used:ratio"  # share of a tenant's budget charged, per job and tenant
BUDGET_WARN_RATIO: Final = 0.8
LEDGER_GROUP: Final = "observatory-ledger"
LEDGER_LAG_HIGH_S: Final = 60  # the oldest unshipped row's age, held for LEDGER_LAG_MINUTES
LEDGER_LAG_MINUTES: Final = 5
# Growing: the backlog's lowest in the last LEDGER_SPOOL_WINDOW above its highest in the window LEDGER_SPOOL_BEFORE
# earlier (a minute apart: a Prometheus 2 range includes its start, so adjacent windows would share a sample).
LEDGER_SPOOL_WINDOW: Final = "5m"
LEDGER_SPOOL_BEFORE: Final = "6m"


def rose(series: str, *matchers: str, by: tuple[str, ...], window: str = "5m", above: float = 0) -> str:
    """True where counter ``series`` went up by more than ``above`` in ``window``, per ``by``. A counter's series
    appears at its first add, already above 0, which increase() cannot see: a series born in the window counts
    too, its value being all it went up by (for a ``window`` after Prometheus itself starts, so does one it had
    not seen before)."""
    selected = sel(series, *matchers)
    return (f"{rate(series, *matchers, by=by, window=window, fn='increase')} > {above:g} "
            f"or {agg('sum', f'{selected} unless {selected} offset {window}', by)} > {above:g}")


def budgets() -> Group:
    """Tenant budgets (``serving_hooks/budgets.py``)."""
    per_tenant = (s.JOB, s.TENANT)
    refused = rose(s.total(names.GATEWAY_REJECTIONS), usage.BUDGET_REFUSED, by=per_tenant)
    failures = s.total(names.BUDGET_STORE_FAILURES)
    failure, mode = names.prometheus_label(names.BUDGET_FAILURE), names.prometheus_label(names.BUDGET_FAIL_MODE)
    tenant = f"{{{{ $labels.{s.TENANT} }}}}"
    return Group(BUDGETS_GROUP, (
        Recording(BUDGET_USED, usage.budget_used(by=per_tenant)),
        Alert("BudgetNearlySpent", f"{BUDGET_USED} >= {BUDGET_WARN_RATIO:g} < 1", "0m", "ticket",
              f"Tenant {tenant} has spent over {BUDGET_WARN_RATIO:.0%} of its budget",
              f"More than {BUDGET_WARN_RATIO:.0%} of the tenant's budget for its period is charged (open reservations "
              "included): at this pace its requests are refused (429 insufficient_quota) before the period resets. "
              "Raise the budget in the tenants file (tenants_file, re-read on change) or warn the tenant."),
        Alert("BudgetExhausted", f"{BUDGET_USED} >= 1 or {refused}", "0m", "ticket",
              f"Tenant {tenant} has spent its budget",
              "The tenant's budget for its period is spent: its requests are refused with 429 insufficient_quota "
              "until the period resets (the error says when). Raise the budget in the tenants file if it should "
              "go on."),
        Alert("BudgetStoreFailing",
              rose(failures, by=(s.JOB, failure, mode)), "0m", "ticket",
              f"{{{{ $labels.job }}}} cannot check budgets ({{{{ $labels.{failure} }}}}, failing "
              f"{{{{ $labels.{mode} }}}})",
              "The budget store (Redis, or the workers' host store) failed or timed out: failing open, requests are "
              "admitted without their budget being charged; failing closed (budget_fail_mode), they are refused "
              "with 503. Check Redis (up, reachable, not frozen) and the gateway's redis_timeout_s."),
    ))


def ledger() -> Group:
    """The usage ledger (``serving_hooks/ledger``): rows dropped, shipping failing, spool backlog and lag."""
    per_instance = usage.PER_INSTANCE
    dropped = rose(s.total(names.LEDGER_ROWS_DROPPED), by=(*per_instance, s.LEDGER_REASON))
    failed = rose(s.total(names.LEDGER_SHIP_FAILURES), by=per_instance, window="2m")
    window = LEDGER_SPOOL_WINDOW
    lowest = agg("max", f"min_over_time({usage.SPOOL_ROWS}[{window}])", per_instance)
    # Compared with 0 while the window before holds no samples (a gateway just started on a full spool);
    # the rule's `for` then spans into the time it does.
    highest_before = agg("max", f"max_over_time({usage.SPOOL_ROWS}[{window}] offset {LEDGER_SPOOL_BEFORE})",
                         per_instance)
    gateway = "{{ $labels.job }} {{ $labels.instance }}"
    return Group(LEDGER_GROUP, (
        Alert("LedgerRowsDropped", dropped, "0m", "page",
              f"{gateway} dropped usage rows ({{{{ $labels.{s.LEDGER_REASON} }}}})",
              "Usage rows could not be written to the ledger's spool and are lost to the bill: spool_error is a full "
              "disk, ledger_spool_max_mb reached or an I/O error on the spool folder (the store is probably down "
              "too: see LedgerShipFailing); closed is a row submitted while the gateway shut down. Free the disk "
              "or raise the limit; the Usage and cost dashboard counts what was lost.",
              needs=events.LEDGER_DROPPED),
        Alert("LedgerShipFailing", failed, "5m", "ticket",
              f"{gateway} cannot ship usage rows to the ledger store",
              "The ledger store (PostgreSQL or the SQLite file of ledger_url) has refused batches or been "
              "unreachable for 5 minutes. Rows wait in the local spool and ship when it is back, so nothing is "
              "lost until the spool's disk fills; `observatory usage` and /admin/usage are behind meanwhile. "
              "Check the store (up, reachable, disk, permissions on table usage).",
              needs=events.LEDGER_SHIP_FAILED),
        Alert("LedgerLagHigh", f"{agg('max', usage.LAG, per_instance)} > {LEDGER_LAG_HIGH_S}", f"{LEDGER_LAG_MINUTES}m",
              "ticket", f"{gateway}'s usage ledger is over {LEDGER_LAG_HIGH_S} s behind",
              f"The oldest row in the spool has waited over {LEDGER_LAG_HIGH_S} s to ship for {LEDGER_LAG_MINUTES} minutes: the "
              "store fails (LedgerShipFailing) or is slower than the traffic (see rows written and shipped on the "
              "Usage and cost dashboard; a larger ledger_batch_rows ships more per pass).",
              needs=events.LEDGER),
        Alert("LedgerSpoolGrowing", f"{lowest} > ({highest_before} or {lowest} * 0)", "5m", "ticket",
              f"{gateway}'s usage ledger spool keeps growing",
              f"For 5 minutes on end, the fewest rows waiting in the spool over the last {window} were more than "
              f"the most in a {window} window {LEDGER_SPOOL_BEFORE} earlier: the backlog has risen for 10 minutes and "
              "more, so the store takes "
              "fewer rows than the gateway writes. The spool's disk fills next, "
              "and rows are dropped then (LedgerRowsDropped). See the spool backlog and ship failures on the "
              "Usage and cost dashboard.",
              needs=events.LEDGER),
    ))
