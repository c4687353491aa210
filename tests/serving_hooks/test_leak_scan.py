"""The leak scan: plant needles (a caller's API key, an unknown key, a signed JWT, a forged JWT, the
prompt text, the upstream's password and key) in a hostile run of the gateway, then grep every
output the run produced: stderr, the exported spans, logs and metrics, ``/readyz``, ``/metrics``
and every response body and header. None may hold a needle.

The run includes a handler that crashes (a bug planted on one route, so a traceback is logged
from the request path, with the caller's credential and prompt in the frames' locals). With
loguru's ``diagnose`` back on, the scan must find a needle: that is what proves it can see one.
"""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest
from fastapi import FastAPI, Request
from loguru import logger

from gpt_observatory import telemetry
from gpt_observatory.serving_hooks.app import create_app
from tests.serving_hooks.conftest import AUDIENCE
from tests.serving_hooks.support import exported_text, serve, settle
from tests.serving_hooks.test_proxy import PEER_MODELS

PROMPT = "leak-scan prompt text " + uuid.uuid4().hex
UPSTREAM_KEY = "sk-leakscan-" + uuid.uuid4().hex
PASSWORD = "pw-" + uuid.uuid4().hex


def run_hostile_suite(keyring, dev_idp, upstream_peer) -> tuple[list[str], list[httpx.Response]]:
    """Serve the gateway in front of the peer and send the hostile requests; the needles and every response."""
    jwt = dev_idp.mint("acme-user", tenant="acme", scopes=["inference"])
    header, payload, _ = jwt.split(".")
    forged_jwt = f"{header}.{payload}.{base64.urlsafe_b64encode(b'x' * 64).decode().rstrip('=')}"
    forged_key = keyring.acme[:-6] + "AAAAAA"
    needles = [keyring.acme, forged_key, jwt, forged_jwt, PROMPT, PASSWORD, UPSTREAM_KEY,
               base64.b64encode(f"gw:{PASSWORD}".encode()).decode()]
    url = upstream_peer.url.replace("http://", f"http://gw:{PASSWORD}@")
    from gpt_observatory.serving_hooks.settings import load

    settings = load(backend="upstream", upstream_url=url, upstream_timeout_s=0.5, api_keys_file=keyring.path,
                    oidc_issuer=dev_idp.issuer, audience=AUDIENCE, upstream_models=PEER_MODELS)
    app = create_app(settings)

    async def crash(request: Request) -> None:  # a planted bug: a traceback from the request path
        prompt = (await request.json())["messages"][0]["content"]
        raise RuntimeError("planted handler bug" if prompt else "no prompt")  # diagnose prints `prompt`

    api = app
    while not isinstance(api, FastAPI):  # under the gateway (and the completions endpoint)
        api = api.app
    api.add_api_route("/v1/crash", crash, methods=["POST"])
    chat = [{"role": "user", "content": PROMPT}]
    answers: list[httpx.Response] = []
    with serve(app) as gw, httpx.Client(base_url=gw.url, timeout=10) as client:
        def post(path: str, body: object = None, token: str | None = keyring.acme, **kw) -> None:
            headers = kw.pop("headers", {})
            if token is not None:
                headers = {"authorization": f"Bearer {token}", **headers}
            content = kw.pop("content", None)
            if content is None:
                answers.append(client.post(path, json=body, headers=headers, **kw))
            else:
                answers.append(client.post(path, content=content, headers=headers, **kw))

        for token in (keyring.acme, jwt):
            post("/v1/chat/completions", {"model": "up-model", "messages": chat}, token)
            post("/v1/chat/completions", {"model": "up-model", "messages": chat, "stream": True}, token)
        for model in ("echo-401", "fail-500", "bad-request", "cut", "string-usage", "negative-usage", "stall"):
            post("/v1/chat/completions", {"model": model, "messages": chat, "stream": model in ("cut", "stall")})
        for token in (forged_key, forged_jwt, keyring.acme + "x", jwt + "x"):
            post("/v1/chat/completions", {"model": "up-model", "messages": chat}, token)
        post("/v1/chat/completions", {"model": "up-model", "messages": 5, "prompt": PROMPT})
        post("/v1/chat/completions", content=b'{"model": "up-model", "messages": [' + PROMPT.encode(),
             headers={"content-type": "application/json"})
        post("/v1/chat/completions", {"model": "up-model", "messages": chat, "n": 1000})
        post("/v1/chat/completions", {"model": "not-served", "messages": chat})
        post("/v1/chat/completions", {"model": "up-model", "messages": chat},
             headers={"authorization": f"Bearer {jwt}", "baggage": f"secret={PASSWORD}"})
        answers.append(client.post("/v1/chat/completions", json={"model": "up-model", "messages": chat},
                                   headers=[("authorization", f"Bearer {keyring.acme}"),
                                            ("authorization", f"Bearer {jwt}")]))
        answers.append(client.get("/v1/models", headers={"authorization": f"Bearer {jwt}"}))
        answers.append(client.get("/readyz"))
        answers.append(client.get("/metrics"))
        # On a connection of its own: uvicorn closes it under the 500 of a handler that raised.
        answers.append(httpx.post(gw.url + "/v1/crash", json={"model": "up-model", "messages": chat},
                                  headers={"authorization": f"Bearer {keyring.acme}"}, timeout=10))
    return needles, answers


def scan(needles: list[str], *outputs: str) -> list[str]:
    """The needles (shortened) found in any of ``outputs``."""
    return [n[:16] + "..." for n in needles if any(n in text for text in outputs)]


@pytest.mark.parametrize("diagnose", [False, True], ids=["as-shipped", "diagnose-on"])
def test_no_needle_in_any_output_and_the_scan_finds_one_with_diagnose_on(
    diagnose, monkeypatch, capfd, keyring, dev_idp, upstream_peer
):
    if diagnose:  # undo the fix under test: loguru prints every local of every frame of a traceback
        add = logger.add

        def add_with_diagnose(*args, **kwargs):
            kwargs["diagnose"] = True
            return add(*args, **kwargs)

        monkeypatch.setattr(logger, "add", add_with_diagnose)
    handle = telemetry.configure("leak-scan", traces_exporter=["memory"], metrics_exporter=["memory"],
                                 logs_exporter=["memory"], gpu_enabled=False, console_logs=True)
    needles, answers = run_hostile_suite(keyring, dev_idp, upstream_peer)
    settle(handle)
    exported = exported_text(handle)
    telemetry.shutdown()
    out, err = capfd.readouterr()
    bodies = [f"{a.status_code} {a.headers!r} {a.text}" for a in answers]

    assert "planted handler bug" in err and "Traceback" in err  # the planted bug was logged with its traceback
    crash = answers[-1]  # our error, in the OpenAI shape, with nothing of the exception
    assert crash.status_code == 500 and crash.json()["error"]["code"] == "internal_error"
    assert "planted" not in crash.text
    assert sorted(a.status_code for a in answers if a.status_code >= 500 and a.request.url.path != "/v1/crash") == [
        502, 502, 502]  # fail-500 and the two bad usages; the stalled stream is a 200 with an error event
    found = scan(needles, err, out, exported, *bodies)
    print(f"\nleak scan (diagnose={diagnose}): {len(needles)} needles, {len(answers)} responses, "
          f"{len(err)} bytes of stderr, {len(exported)} bytes of telemetry: found {found}")
    if diagnose:
        assert found, "the scan saw no needle although the tracebacks print the frames' locals"
    else:
        assert found == []
