"""Property-based checks of the app against its own OpenAPI document (schemathesis), authenticated,
through real uvicorn: whatever the body, never a 5xx. Positive mode draws requests the document
allows; negative mode draws ones it forbids (wrong types, missing fields, out-of-range values),
which must be refused with a 4xx, never served and never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from gpt_observatory.serving_hooks.app import build_hooks, create_app
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.serving_hooks.settings import load
from tests.serving_hooks.echo_model import EchoModel
from tests.serving_hooks.support import serve


@pytest.fixture
def gateway(memory_telemetry, keyring):
    app_settings = load(api_keys_file=keyring.path, max_request_bytes=64 * 1024)
    hooks = build_hooks(app_settings)
    backend = InProcessBackend(hooks, "tiny-gpt", model=EchoModel(), info=ModelInfo("tiny-gpt", "1"))
    with serve(create_app(app_settings, router=ModelRouter({"champion": backend}))) as served:
        yield served


def _openapi() -> dict:
    """The app's OpenAPI document (building the app starts nothing; the tests call the served one)."""
    app = create_app(load(allow_anonymous=True), router=ModelRouter({"champion": InProcessBackend(None, "tiny-gpt")}),
                     instrument=False)
    return app.openapi()


schema = schemathesis.openapi.from_dict(_openapi())
negative = schemathesis.openapi.from_dict(_openapi())
negative.config.generation.update(modes=[GenerationMode.NEGATIVE])
TRIED: dict[str, list[int]] = {}  # mode -> statuses seen, printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield
    for mode, statuses in TRIED.items():
        print(f"\nschemathesis {mode}: {len(statuses)} examples, {sum(s >= 500 for s in statuses)} 5xx, "
              f"statuses {sorted(set(statuses))}")


@schema.parametrize()
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_app_fail(case, gateway, keyring):
    response = case.call(base_url=gateway.url, headers={"Authorization": f"Bearer {keyring.acme}"}, timeout=30)
    TRIED.setdefault("positive", []).append(response.status_code)
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500


@negative.parametrize()
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_request_the_document_forbids_is_refused_with_a_4xx(case, gateway, keyring):
    response = case.call(base_url=gateway.url, headers={"Authorization": f"Bearer {keyring.acme}"}, timeout=30)
    TRIED.setdefault("negative", []).append(response.status_code)
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500
    if case.method == "POST":  # a body the document forbids is never served (GETs ignore unknown parameters)
        assert 400 <= response.status_code < 500, (case.body, response.text)


def test_the_document_declares_the_bearer_credential_on_the_api_and_not_on_the_probes():
    doc = _openapi()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "An OIDC access token or an Observatory API key."
    }
    secured = {(path, method) for path, ops in doc["paths"].items() for method, op in ops.items() if "security" in op}
    assert secured == {("/v1/chat/completions", "post"), ("/v1/completions", "post"), ("/v1/models", "get")}
