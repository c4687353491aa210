"""A full demo run's telemetry holds no secret and no prompt text: API keys, OAuth client secret,
bearer tokens (JWT-shaped or not), Basic credentials and the scripted client's prompts appear in
none of the exported traces, metrics and logs, nor in the gateway's console log."""

from __future__ import annotations

import base64
import json
import re

from gpt_observatory.demo.client import PROMPTS

JWT = re.compile(r"eyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]*")
API_KEY = re.compile(r"obs_[0-9a-f]{12}_[\w-]{20,}")


def test_demo_telemetry_holds_no_secret_and_no_prompt(demo):
    folder = demo.state / "telemetry"
    files = [*sorted(folder.glob("*.jsonl*")), demo.state / "demo" / "gateway.log"]
    text = "\n".join(path.read_text(errors="replace") for path in files)
    assert len(text) > 10_000 and '"auth.verify"' in text, "the demo exported less than expected"

    creds = json.loads((demo.state / "demo" / "credentials.json").read_text())
    secrets = {k: v for k, v in creds.items() if k not in ("issuer", "client_id")}
    secrets["basic credentials"] = base64.b64encode(b"demo:password").decode()  # what the client sent
    hits = [name for name, value in secrets.items() if value in text]
    hits += [f"prompt {p[:16]!r}" for p in PROMPTS if p in text]
    hits += [f"JWT {m[:12]}..." for m in JWT.findall(text)]
    hits += [f"API key {m[:12]}..." for m in API_KEY.findall(text)]
    hits += [word for word in ("Bearer ", "bearer ", "Basic ", "PRIVATE KEY") if word in text]
    assert not hits, f"the demo's telemetry leaked: {hits}"
    # The scan would have found them: every secret really was used against the gateway.
    assert demo.summary["auth_outcomes"].get("api_key/ok") and demo.summary["auth_outcomes"].get("jwt/ok")
