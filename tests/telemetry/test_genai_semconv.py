"""The GenAI names: the 0.66b0 ones by default, the pinned semantic-conventions-genai release's with
OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental (both with .../dup), checked against the
release's YAML vendored under tests/data/semconv-genai/ and against the README's table."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import orjson
import pytest
import yaml

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.inference import GenAIHooks, GenAIRequest, GenerationStats, ModelInfo
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.redact import MASK
from tests.serving_hooks import conftest as gateway_fixtures
from tests.serving_hooks.support import point_value, serve, settle
from tests.serving_hooks.upstream_peer import PROMPT_TOKENS

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "tests" / "data" / "semconv-genai" / "model" / "gen-ai"
LATEST = "gen_ai_latest_experimental"
DUP = "gen_ai_latest_experimental/dup"
SECRET = "sk-live-0123456789abcdefghij"
INFO = ModelInfo("tiny-gpt", "7", "champion", "champion")

# The gateway tests' fixtures: the in-memory pipeline, an API-key file, the local OpenAI-compatible upstream.
memory_telemetry = gateway_fixtures.memory_telemetry
keyring = gateway_fixtures.keyring
upstream_peer = gateway_fixtures.upstream_peer

# The names the pinned release defines for what we emit with the opt-in.
PINNED = (
    names.GEN_AI_SERVER_REQUEST_DURATION,
    names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
    names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
    names.GEN_AI_CLIENT_INFERENCE_DURATION,
    names.GEN_AI_CLIENT_INFERENCE_TIME_TO_FIRST_CHUNK,
    names.GEN_AI_CLIENT_INFERENCE_TIME_PER_OUTPUT_CHUNK,
    names.GEN_AI_CLIENT_INFERENCE_OPERATION_INPUT_TOKENS,
    names.GEN_AI_CLIENT_INFERENCE_OPERATION_OUTPUT_TOKENS,
    names.GEN_AI_CLIENT_INFERENCE_USAGE_INPUT_TOKENS,
    names.GEN_AI_CLIENT_INFERENCE_USAGE_OUTPUT_TOKENS,
)


def release() -> tuple[dict[str, dict], dict[str, dict]]:
    """(metrics by name, attribute groups by id) of the vendored release files."""
    metrics: dict[str, dict] = {}
    groups: dict[str, dict] = {}
    for f in ("metrics.yaml", "token-metrics.yaml"):
        doc = yaml.safe_load((RELEASE / f).read_text())
        metrics.update({m["name"]: m for m in doc["metrics"]})
        groups.update({g["id"]: g for g in doc.get("attribute_groups", [])})
    return metrics, groups


def test_the_pinned_names_are_the_vendored_release_s():
    metrics, groups = release()
    kinds = {"histogram": "histogram", "counter": "counter", "updowncounter": "updowncounter", "gauge": "gauge"}
    for m in PINNED:
        assert m.name in metrics, m.name
        assert (kinds[metrics[m.name]["instrument"]], metrics[m.name]["unit"]) == (m.kind, m.unit), m.name
    # The usage counters require gen_ai.token.modality, and 'unknown' is its value without a breakdown.
    usage = metrics[names.GEN_AI_CLIENT_INFERENCE_USAGE_INPUT_TOKENS.name]
    group = groups[usage["attributes"][0]["ref_group"]]
    assert {"ref": names.GEN_AI_TOKEN_MODALITY, "requirement_level": "required"} in group["attributes"]
    assert f"`{names.GEN_AI_TOKEN_MODALITY}` set to `{names.GEN_AI_TOKEN_MODALITY_UNKNOWN}`" in " ".join(
        usage["note"].split()
    )
    # What the release replaced: 0.66b0's client token histogram is gone, its operation duration is not for inference.
    assert names.GEN_AI_CLIENT_TOKEN_USAGE.name not in metrics
    for old in (names.GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK, names.GEN_AI_CLIENT_TIME_PER_OUTPUT_CHUNK):
        assert old.name not in metrics
    assert names.GEN_AI_CLIENT_INFERENCE_DURATION.name in metrics[names.GEN_AI_CLIENT_OPERATION_DURATION.name]["note"]


@pytest.mark.parametrize(("value", "legacy", "latest"), [
    (None, True, False),
    ("", True, False),
    ("http", True, False),
    ("gen_ai_latest", True, False),
    (LATEST, False, True),
    (f"http, {LATEST.upper()}", False, True),
    (DUP, True, True),
    (f"database/dup,{DUP}", True, True),
])
def test_the_opt_in_is_a_comma_separated_list(value, legacy, latest):
    assert names.gen_ai_emission(value) == (legacy, latest)


# ------------------------------------------------------------------ what the code emits
def run_generations(capture: bool = True) -> None:
    """One in-process and one proxied streaming chat, and one proxied call that fails without usage."""
    server = GenAIHooks("server", capture_content=capture)
    with server.generation(GenAIRequest("chat", "tiny-gpt", 8, 0.5, 0.9, True, [{"role": "user", "content": "hi"}]),
                           INFO) as gen:
        for _ in range(3):
            gen.token()
        gen.record(GenerationStats(4, 3, ("stop",), "chatcmpl-1", "tiny-gpt", "abc"))
    client = GenAIHooks("client", provider="openai", capture_content=capture, server_address="10.0.0.1",
                        server_port=8001, models=["up-model"])
    with client.generation(GenAIRequest("chat", "up-model", 8, None, None, True, [{"role": "user", "content": "hi"}])) as gen:
        for _ in range(3):
            gen.token()
        gen.record(GenerationStats(5, 9, ("stop",), "up-chat", "up-model", "abc"))
    with client.generation(GenAIRequest("text_completion", "up-model", prompt="hi")) as gen:
        gen.fail("timeout")


def emitted(handle) -> set[str]:
    """Every GenAI name in the exported spans and metrics: span attributes, metric names, metric attributes."""
    out: set[str] = set()
    for span in handle.memory.spans():
        out |= {k for k in span.attributes if k.startswith("gen_ai.")}
    for name, points in handle.memory.metrics().items():
        if name.startswith(("gen_ai.", "observatory.gen_ai.")):
            out.add(name)
            for p in points:
                out |= {k for k in p.attributes if k.startswith("gen_ai.")}
    return out


def readme_columns() -> tuple[set[str], set[str]]:
    """(default, pinned release) name sets from the README's 'GenAI names' table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### GenAI names", 1)[1]
    section = re.split(r"(?m)^#{2,3} ", section, maxsplit=1)[0]
    default: set[str] = set()
    latest: set[str] = set()
    pattern = re.compile(r"`((?:observatory\.)?gen_ai\.[a-z_.]+)`")
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or all(re.fullmatch(r"-+", c) for c in cells):
            continue
        default |= set(pattern.findall(cells[1]))
        latest |= set(pattern.findall(cells[2]))
    return default, latest


@pytest.mark.parametrize("opt_in", [None, LATEST, DUP])
def test_the_readme_table_lists_every_genai_name_emitted(opt_in, monkeypatch, memory_telemetry):
    if opt_in is None:
        monkeypatch.delenv(names.SEMCONV_OPT_IN_ENV, raising=False)
    else:
        monkeypatch.setenv(names.SEMCONV_OPT_IN_ENV, opt_in)
    run_generations()
    default, latest = readme_columns()
    want = {None: default, LATEST: latest, DUP: default | latest}[opt_in]
    got = emitted(memory_telemetry)
    assert got == want, {"emitted, not in the table": sorted(got - want), "in the table, not emitted": sorted(want - got)}


def test_the_names_are_decided_when_the_hooks_are_built(monkeypatch, memory_telemetry):
    monkeypatch.delenv(names.SEMCONV_OPT_IN_ENV, raising=False)
    hooks = GenAIHooks("client", provider="openai")
    monkeypatch.setenv(names.SEMCONV_OPT_IN_ENV, LATEST)  # too late for these hooks
    with hooks.generation(GenAIRequest("chat", "up-model")) as gen:
        gen.record(GenerationStats(5, 9))
    got = memory_telemetry.memory.metrics()
    assert names.GEN_AI_CLIENT_OPERATION_DURATION.name in got
    assert names.GEN_AI_CLIENT_INFERENCE_DURATION.name not in got


def test_the_release_s_client_metrics_carry_usage_per_direction(memory_telemetry):
    hooks = GenAIHooks("client", provider="openai", semconv_opt_in=LATEST)
    with hooks.generation(GenAIRequest("chat", "up-model", stream=True)) as gen:
        for _ in range(3):
            gen.token()
        gen.record(GenerationStats(5, 9))
    with hooks.generation(GenAIRequest("chat", "up-model")) as gen:
        gen.fail("timeout")  # no usage came back: recorded as 0, with its error.type

    got = memory_telemetry.memory.metrics()
    assert names.GEN_AI_CLIENT_TOKEN_USAGE.name not in got and names.GEN_AI_CLIENT_OPERATION_DURATION.name not in got
    model = {names.GEN_AI_REQUEST_MODEL: "up-model"}
    inp = got[names.GEN_AI_CLIENT_INFERENCE_OPERATION_INPUT_TOKENS.name]
    out = got[names.GEN_AI_CLIENT_INFERENCE_OPERATION_OUTPUT_TOKENS.name]
    assert sorted(p.sum for p in inp) == [0, 5] and sorted(p.sum for p in out) == [0, 9]
    assert all(names.GEN_AI_TOKEN_TYPE not in p.attributes for p in inp + out)
    assert tuple(inp[0].explicit_bounds) == names.TOKEN_BUCKETS
    assert point_value(inp, **{names.ERROR_TYPE: "timeout"}) == 1
    unknown = {names.GEN_AI_TOKEN_MODALITY: names.GEN_AI_TOKEN_MODALITY_UNKNOWN, **model}
    assert point_value(got[names.GEN_AI_CLIENT_INFERENCE_USAGE_INPUT_TOKENS.name], **unknown) == 5
    assert point_value(got[names.GEN_AI_CLIENT_INFERENCE_USAGE_OUTPUT_TOKENS.name], **unknown) == 9
    assert point_value(got[names.GEN_AI_CLIENT_INFERENCE_TIME_TO_FIRST_CHUNK.name], **model) == 1
    assert point_value(got[names.GEN_AI_CLIENT_INFERENCE_TIME_PER_OUTPUT_CHUNK.name], **model) == 1
    assert point_value(got[names.GEN_AI_CLIENT_INFERENCE_DURATION.name], **model) == 2


def test_captured_content_follows_the_release_s_messages_and_the_redaction(memory_telemetry):
    prompt = [{"role": "system", "content": "be brief"},
              {"role": "user", "content": [{"type": "text", "text": f"my key is {SECRET}"}, {"type": "image_url"}]}]
    hooks = GenAIHooks("client", provider="openai", capture_content=True, semconv_opt_in=LATEST)
    with hooks.generation(GenAIRequest("chat", "up-model", prompt=prompt)) as gen:
        gen.record(GenerationStats(5, 2, ("stop",), completion="short"))
    with hooks.generation(GenAIRequest("text_completion", "up-model", prompt="once upon")) as gen:
        gen.record(GenerationStats(2, 1, ("length",), completion="a time"))

    chat, text = memory_telemetry.memory.spans()[-2:]
    assert SECRET not in chat.to_json()
    assert orjson.loads(chat.attributes[names.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": f"my key is {MASK}"}, {"type": "image_url"}]},
    ]
    assert orjson.loads(chat.attributes[names.GEN_AI_OUTPUT_MESSAGES]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "short"}], "finish_reason": "stop"}
    ]
    assert orjson.loads(text.attributes[names.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "once upon"}]}
    ]

    quiet = GenAIHooks("client", provider="openai", semconv_opt_in=LATEST)  # capture off: no content at all
    with quiet.generation(GenAIRequest("chat", "quiet-model", prompt=prompt)) as gen:
        gen.record(GenerationStats(5, 2, ("stop",), completion="short"))
    attrs = memory_telemetry.memory.spans()[-1].attributes
    assert names.GEN_AI_INPUT_MESSAGES not in attrs and names.GEN_AI_OUTPUT_MESSAGES not in attrs


def test_the_gateway_proxying_an_upstream_emits_the_release_s_names_when_opted_in(
    monkeypatch, memory_telemetry, upstream_peer, keyring
):
    monkeypatch.setenv(names.SEMCONV_OPT_IN_ENV, LATEST)  # before the app builds its hooks
    settings = load(backend="upstream", upstream_url=upstream_peer.url, upstream_models=["up-model"],
                    api_keys_file=keyring.path)
    with serve(create_app(settings)) as served:
        client = openai.OpenAI(base_url=served.v1, api_key=keyring.acme, max_retries=0)
        client.chat.completions.create(model="up-model", messages=[{"role": "user", "content": "hello"}])
        settle(memory_telemetry)
    got = memory_telemetry.memory.metrics()
    assert names.GEN_AI_CLIENT_OPERATION_DURATION.name not in got and names.GEN_AI_CLIENT_TOKEN_USAGE.name not in got
    assert point_value(got[names.GEN_AI_CLIENT_INFERENCE_DURATION.name], **{names.GEN_AI_REQUEST_MODEL: "up-model"}) == 1
    usage = got[names.GEN_AI_CLIENT_INFERENCE_USAGE_INPUT_TOKENS.name]
    assert point_value(usage, **{names.GEN_AI_TOKEN_MODALITY: names.GEN_AI_TOKEN_MODALITY_UNKNOWN}) == PROMPT_TOKENS
