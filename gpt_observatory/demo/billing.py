"""The demo's metering (issue 17): tenants on three tiers, prices for both catalog models, the usage
ledger on, one tenant run into its budget, and what the callers themselves saw, to check the ledger by.

The gateway gets ``--tenants-file``, ``--prices-file`` and ``--ledger-enabled`` with the embedded
SQLite ledger in the state folder (:func:`serve_args`). Its budgets live in the gateway process's own
memory: the demo has no Redis and runs one gateway process, and that is the store
``serving_hooks.budgets.metering_for`` picks then (``serve --workers N`` would get the supervisor's
host store), so every demo run starts with budgets untouched. :class:`Spend` is every metered
request as its caller saw it (status and ``usage``), priced from the same prices file;
:func:`exhaust_budget` sends the ``trial`` tenant's requests until the gateway refuses one with
429 ``insufficient_quota``. The cost table itself is :mod:`.costs`.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gpt_observatory.demo.stack import MODEL, REQUESTS_PER_MINUTE

CURRENCY = "USD"
TRIAL = "trial"  # the tenant with the small budget (an API key)
CANARY_TENANT = "canary-load"  # the demo's own load generators: the judging traffic and the fleet phase
FLEET_TENANT = "fleet-load"
TRIAL_MAX_TOKENS = 24
TRIAL_MAX_REQUESTS = REQUESTS_PER_MINUTE - 1  # the budget, not the free tier's rate limit, stops it

TENANTS_TOML = f"""\
# The demo's tenants (observatory serve --tenants-file): README "Tenants, prices and budgets".
# Tenants not listed (the key without a scope) get the gateway's own limit, {REQUESTS_PER_MINUTE} requests a minute.

[tiers.free]
requests_per_minute = {REQUESTS_PER_MINUTE}
models = ["{MODEL}"]

[tiers.pro]
requests_per_minute = 600
models = ["*"]
budget = {{ amount = "100.00", period = "month" }}

[tiers.internal]
requests_per_minute = 100000
models = ["*"]

[[tenants]]
name = "{TRIAL}"
tier = "free"
budget = {{ amount = "0.02", period = "day" }}
labels = {{ plan = "trial" }}

[[tenants]]
name = "burst"
tier = "free"

[[tenants]]
name = "demo"
tier = "pro"

[[tenants]]
name = "batch"
tier = "pro"

[[tenants]]
name = "{CANARY_TENANT}"
tier = "internal"

[[tenants]]
name = "{FLEET_TENANT}"
tier = "internal"
"""

PRICES_TOML = f"""\
# The demo's prices (observatory serve --prices-file), per 1M tokens, in {CURRENCY}.

[[prices]]
model = "{MODEL}"
effective_from = 2024-01-01T00:00:00Z
currency = "{CURRENCY}"
input_per_1m = "30.00"
output_per_1m = "60.00"

[[prices]]
model = "fleet-echo"
effective_from = 2024-01-01T00:00:00Z
currency = "{CURRENCY}"
input_per_1m = "0.50"
output_per_1m = "1.50"
"""


def money(micro: int) -> str:
    """Micro-units as an amount of :data:`CURRENCY` (``0.0123 USD``)."""
    return f"{micro / 1_000_000:.6f}".rstrip("0").rstrip(".") + f" {CURRENCY}"


def tiers() -> dict[str, str]:
    """Each listed tenant's tier, as the tenants file says."""
    return {t["name"]: t.get("tier", "") for t in tomllib.loads(TENANTS_TOML)["tenants"]}


@dataclass(frozen=True)
class Files:
    tenants: Path
    prices: Path
    ledger: Path  # the SQLite ledger store (the spool is the gateway's default, <state>/ledger-spool)

    def serve_args(self) -> list[str]:
        """What ``observatory serve`` is given for tenants, prices, budgets and the ledger."""
        return ["--tenants-file", str(self.tenants), "--prices-file", str(self.prices),
                "--budget-currency", CURRENCY, "--ledger-enabled", "--ledger-url", str(self.ledger)]


def write_files(folder: Path, state: Path) -> Files:
    """The tenants and prices files (in ``folder``) and where the ledger goes (the state folder's default)."""
    files = Files(folder / "tenants.toml", folder / "prices.toml", state / "ledger.sqlite3")
    files.tenants.write_text(TENANTS_TOML)
    files.prices.write_text(PRICES_TOML)
    return files


@dataclass
class Seen:
    """One tenant's metered requests as their callers saw them."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro: int = 0
    unseen: int = 0  # answered (a ledger row) but no usage reached the caller: a stream cut midway


class Spend:
    """Every metered request the demo sends, by tenant: its usage as the caller got it, priced from
    the demo's prices file exactly as the gateway prices it (:func:`serving_hooks.prices.cost_micro`)."""

    def __init__(self, prices_file: Path) -> None:
        from gpt_observatory.serving_hooks import prices

        self._prices = prices.load(prices_file, CURRENCY)
        self._lock = threading.Lock()
        self.tenants: dict[str, Seen] = {}

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> int:
        from gpt_observatory.serving_hooks.prices import cost_micro

        return cost_micro(self._prices.price_at(model), input_tokens, output_tokens)

    def note(self, tenant: str, model: str, status: int, usage: Any = None) -> None:
        """One request's answer: ``status`` (0: the connection was cut) and its ``usage`` (a mapping or
        the openai client's object; None: none came). A refusal before metering (400-413) is no row."""
        if 400 <= status < 500 and status != 429:
            return
        tokens = _tokens(usage)
        with self._lock:
            seen = self.tenants.setdefault(tenant, Seen())
            seen.requests += 1
            if tokens is None:
                if status != 429:  # a refusal used nothing; anything else without usage is unknown
                    seen.unseen += 1
                return
            seen.input_tokens += tokens[0]
            seen.output_tokens += tokens[1]
            seen.cost_micro += self.cost(model, *tokens)

    def as_dict(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {t: asdict(s) for t, s in sorted(self.tenants.items())}


def _tokens(usage: Any) -> tuple[int, int] | None:
    if usage is None:
        return None
    if not isinstance(usage, Mapping):
        usage = {"prompt_tokens": getattr(usage, "prompt_tokens", None),
                 "completion_tokens": getattr(usage, "completion_tokens", None)}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


@dataclass
class BudgetReport:
    """The budgeted tenant's requests up to the gateway's refusal, and the refusal as it came."""

    tenant: str = TRIAL
    tier: str = ""
    budget: str = ""  # as the tenants file says it, e.g. "0.02 USD a day"
    admitted: int = 0
    spent_micro: int = 0  # the admitted requests' cost, from their usage and the prices
    worst_case_micro: int = 0  # the most the gateway reserves for one of its requests (prompt estimate + max_tokens)
    refused: dict[str, Any] = field(default_factory=dict)  # status, type, code, reset, retry_after, message

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def budget_text(budget: dict[str, Any]) -> str:
    """The summary's line about :class:`BudgetReport` (as a dict)."""
    refused = budget["refused"]
    text = (f"tenant {budget['tenant']} (tier {budget['tier']}, {budget['budget']}): {budget['admitted']} requests "
            f"admitted, {money(budget['spent_micro'])} spent (each reserved up to {money(budget['worst_case_micro'])} "
            "before its call: the prompt estimate and max_tokens)")
    if not refused:
        return text + "; never refused"
    return (text + f"\nthen {refused['status']} type {refused['type']}, code {refused['code']}; "
            f"x-observatory-budget-reset {refused['reset']}, retry-after {refused['retry_after']} s\n"
            f"{refused['message']}")


def exhaust_budget(base_url: str, api_key: str, spend: Spend, report: Any) -> BudgetReport:
    """Chat completions as :data:`TRIAL` until the gateway answers 429 ``insufficient_quota`` (at most
    :data:`TRIAL_MAX_REQUESTS`); every answer is noted in ``spend`` and the client ``report``."""
    from gpt_observatory.demo.client import PROMPTS

    table = tomllib.loads(TENANTS_TOML)
    entry = next(t for t in table["tenants"] if t["name"] == TRIAL)
    budget = entry["budget"]
    out = BudgetReport(tier=entry["tier"], budget=f"{budget['amount']} {CURRENCY} a {budget['period']}")
    out.worst_case_micro = max(spend.cost(MODEL, len(p.encode()), TRIAL_MAX_TOKENS) for p in PROMPTS)
    headers = {"authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for i in range(TRIAL_MAX_REQUESTS):
            body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "max_tokens": TRIAL_MAX_TOKENS}
            answer = client.post("/chat/completions", json=body, headers=headers)
            usage = answer.json().get("usage") if answer.status_code == 200 else None
            spend.note(TRIAL, MODEL, answer.status_code, usage)
            report.note(f"over budget ({TRIAL})", answer.status_code)
            if answer.status_code == 200:
                out.admitted += 1
                tokens = _tokens(usage)
                out.spent_micro += spend.cost(MODEL, *tokens) if tokens else 0
                continue
            error = (answer.json().get("error") or {}) if answer.headers.get("content-type", "").startswith(
                "application/json") else {}
            out.refused = {"status": answer.status_code, "type": error.get("type"), "code": error.get("code"),
                           "reset": answer.headers.get("x-observatory-budget-reset"),
                           "retry_after": answer.headers.get("retry-after"), "message": error.get("message")}
            break
    return out
