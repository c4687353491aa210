"""Template variables shared by the dashboards."""

from __future__ import annotations

from typing import Final

from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Variable
from gpt_observatory.telemetry import names

JOB_VAR: Final = Variable("job", "Service", f"label_values({s.TARGET_INFO}, {s.JOB})")
TENANT_VAR: Final = Variable(
    "tenant", "Tenant", f"label_values({s.total(names.GATEWAY_REQUESTS)}{{{s.BY_JOB}}}, {s.TENANT})"
)
MODEL_VAR: Final = Variable(
    "model", "Model", f"label_values({s.total(names.GEN_AI_OUTPUT_TOKENS)}{{{s.BY_JOB}}}, {s.REQUEST_MODEL})"
)
GPU_VAR: Final = Variable("gpu", "GPU", f"label_values({s.gauge(names.HW_GPU_MEMORY_LIMIT)}{{{s.BY_JOB}}}, {s.HW_ID})")
REGISTERED_MODEL_VAR: Final = Variable(
    "registered_model", "Registered model", f"label_values({s.total(names.PIPELINE_DECISIONS)}, {s.MODEL_NAME})"
)
