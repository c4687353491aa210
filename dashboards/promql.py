"""Just enough PromQL lexing to say which series and labels an expression reads.

Syntax is validated by Prometheus's own parser (``promtool check rules``, see
:mod:`dashboards.check`); this module only needs to find identifiers and tell metric names
from functions, aggregation operators, keywords, label names, durations and strings. No
maintained Python PromQL parser exists (the ones on PyPI are query *builders* or abandoned),
so this small lexer is ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_TOKEN: Final = re.compile(
    r"""
      (?P<ws>\s+|\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<var>\$\{[^}]+\}|\$[A-Za-z_][A-Za-z0-9_]*)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){}\[\],:@])
    """,
    re.VERBOSE,
)
_COMPARISONS: Final = frozenset({"==", "!=", ">", "<", ">=", "<="})
_GROUPING: Final = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS: Final = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}
    | {"sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile"}
    | {"count_values", "group", "limitk", "limit_ratio"}
    | _GROUPING
)

_LABEL_VALUES: Final = re.compile(r"^\s*label_values\((?P<expr>.*),\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)

# Grafana's built-in interval variables and what an instant evaluation substitutes for them.
GRAFANA_INTERVALS: Final = {"__rate_interval": "2m", "__interval": "1m", "__range": "15m"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    start: int


@dataclass(frozen=True, slots=True)
class References:
    """Series (metric names) and label names an expression mentions."""

    metrics: frozenset[str]
    labels: frozenset[str]


def tokens(expr: str) -> list[Token]:
    """Lex ``expr``; raises ``ValueError`` on a character PromQL does not allow."""
    out: list[Token] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"unexpected {expr[pos]!r} at offset {pos} in {expr!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(Token(kind, m.group(), pos))
        pos = m.end()
    return out


def references(expr: str) -> References:
    """The metric names and label names ``expr`` reads (Grafana ``$variables`` are ignored)."""
    toks = tokens(expr)
    metrics: set[str] = set()
    labels: set[str] = set()
    braces = brackets = 0
    group_depth: int | None = None  # paren depth of an open by/without/on/... label list
    parens = 0
    for i, tok in enumerate(toks):
        nxt = toks[i + 1].text if i + 1 < len(toks) else ""
        if tok.text == "{":
            braces += 1
        elif tok.text == "}":
            braces -= 1
        elif tok.text in ("[", "]"):
            brackets += 1 if tok.text == "[" else -1
        elif tok.text == "(":
            parens += 1
        elif tok.text == ")":
            parens -= 1
            if group_depth is not None and parens < group_depth:
                group_depth = None
        elif tok.kind != "ident" or brackets:  # ranges and subquery steps hold no names
            continue
        elif braces:
            if nxt in ("=", "!=", "=~", "!~"):
                labels.add(tok.text)
        elif group_depth is not None:
            labels.add(tok.text)
        elif tok.text in _GROUPING and nxt == "(":
            group_depth = parens + 1
        elif tok.text.lower() in _KEYWORDS or nxt == "(":
            continue
        else:
            metrics.add(tok.text)
    return References(frozenset(metrics), frozenset(labels))


def boolify(expr: str) -> str:
    """``expr`` with every comparison outside label matchers made a ``bool`` comparison.

    An alert expression returns nothing while it does not fire; its boolified form returns a
    0/1 sample for every series the condition looks at, which proves the selectors and vector
    matching meet real series without waiting for the alert to fire.
    """
    toks = tokens(expr)
    inserts: list[int] = []
    braces = 0
    for i, tok in enumerate(toks):
        if tok.text == "{":
            braces += 1
        elif tok.text == "}":
            braces -= 1
        elif not braces and tok.text in _COMPARISONS and (i + 1 == len(toks) or toks[i + 1].text != "bool"):
            inserts.append(tok.start + len(tok.text))
    for at in reversed(inserts):
        expr = f"{expr[:at]} bool{expr[at:]}"
    return expr


def instant(expr: str, variables: dict[str, str] | None = None) -> str:
    """``expr`` with Grafana variables replaced so Prometheus can evaluate it: interval variables
    by fixed durations, every other ``$var`` by ``variables[var]`` or ``.*`` (the "All" value)."""
    values = {**GRAFANA_INTERVALS, **(variables or {})}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name.split(":")[0], ".*")

    return re.sub(r"\$\{([^}]+)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, expr)


def label_values(query: str) -> tuple[str, str] | None:
    """``(series selector, label)`` of a Grafana ``label_values(selector, label)`` variable query."""
    m = _LABEL_VALUES.match(query)
    return (m.group("expr"), m.group("label")) if m else None
