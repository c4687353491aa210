"""The GenAI conventions' current names, emitted when ``OTEL_SEMCONV_STABILITY_OPT_IN`` opts in.

Pinned: open-telemetry/semantic-conventions-genai at commit
066d4a7f356f8600de6f10c42874626ab88692fb (``model/gen-ai/metrics.yaml`` and
``model/gen-ai/token-metrics.yaml``, vendored under ``tests/data/semconv-genai/`` and checked
against these constants). The repository has published no release tag yet (its dev channel,
``vX.Y.Z-dev``, has none), so a commit is the pin; move it deliberately, with the vendored copy.

What changed from ``opentelemetry-semantic-conventions`` 0.66b0, which we emit by default: the
client metrics moved from ``gen_ai.client.operation.*`` to ``gen_ai.client.inference.*``; the
``gen_ai.client.token.usage`` histogram (split by ``gen_ai.token.type``) is replaced by one
histogram per direction and one counter per direction (by ``gen_ai.token.modality``); content on
spans follows the messages JSON schema (``role`` and ``parts``). Server metrics keep their names.
"""

from __future__ import annotations

from typing import Final, NamedTuple

REPOSITORY: Final = "open-telemetry/semantic-conventions-genai"
COMMIT: Final = "066d4a7f356f8600de6f10c42874626ab88692fb"

OPT_IN_ENV: Final = "OTEL_SEMCONV_STABILITY_OPT_IN"
OPT_IN_LATEST: Final = "gen_ai_latest_experimental"  # the pinned names only
OPT_IN_DUP: Final = "gen_ai_latest_experimental/dup"  # both, for a migration window (as http/dup)

# Client inference (we proxy an upstream model server).
CLIENT_INFERENCE_DURATION: Final = "gen_ai.client.inference.duration"
CLIENT_INFERENCE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.inference.time_to_first_chunk"
CLIENT_INFERENCE_TIME_PER_OUTPUT_CHUNK: Final = "gen_ai.client.inference.time_per_output_chunk"
CLIENT_INFERENCE_OPERATION_INPUT_TOKENS: Final = "gen_ai.client.inference.operation.input_tokens"  # histogram
CLIENT_INFERENCE_OPERATION_OUTPUT_TOKENS: Final = "gen_ai.client.inference.operation.output_tokens"  # histogram
CLIENT_INFERENCE_USAGE_INPUT_TOKENS: Final = "gen_ai.client.inference.usage.input_tokens"  # counter
CLIENT_INFERENCE_USAGE_OUTPUT_TOKENS: Final = "gen_ai.client.inference.usage.output_tokens"  # counter

# Server (the model runs in this process): unchanged names.
SERVER_REQUEST_DURATION: Final = "gen_ai.server.request.duration"
SERVER_TIME_TO_FIRST_TOKEN: Final = "gen_ai.server.time_to_first_token"
SERVER_TIME_PER_OUTPUT_TOKEN: Final = "gen_ai.server.time_per_output_token"

TOKEN_MODALITY: Final = "gen_ai.token.modality"  # required on the usage counters
TOKEN_MODALITY_UNKNOWN: Final = "unknown"  # the provider reports no modality breakdown (OpenAI's usage does not)


class Emission(NamedTuple):
    """Which GenAI names to emit: the 0.66b0 ones (``legacy``), the pinned ones (``latest``), or both."""

    legacy: bool
    latest: bool


def emission(opt_in: str | None) -> Emission:
    """Read ``OTEL_SEMCONV_STABILITY_OPT_IN`` (a comma-separated list; other categories are ignored)."""
    values = {v.strip().lower() for v in (opt_in or "").split(",")}
    if OPT_IN_DUP in values:
        return Emission(legacy=True, latest=True)
    if OPT_IN_LATEST in values:
        return Emission(legacy=False, latest=True)
    return Emission(legacy=True, latest=False)
