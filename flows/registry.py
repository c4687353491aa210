"""MLflow Model Registry operations for one registered model: versions with lineage, aliases,
evaluation figures. Aliases only (``champion``, ``challenger``, ``previous``), never stages.

Traps handled here: ``search_model_versions`` returns empty ``aliases`` (aliases are read with
``get_model_version_by_alias``); a re-run with the same fingerprint returns the existing version.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from gpt_observatory.flows.gates import EvalSummary
from gpt_observatory.flows.lineage import Lineage

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"

FINGERPRINT_TAG = "observatory.fingerprint"
TRAINING_RUN_TAG = "observatory.training_run_id"
DATA_HASH_TAG = "observatory.data_hash"
CODE_VERSION_TAG = "observatory.code_version"
PARAMS_TAG = "observatory.params"
EVAL_TAG = "observatory.eval"
EVAL_MODEL_TAG = "observatory.model"  # on evaluation runs: which registered model and version
EVAL_VERSION_TAG = "observatory.model_version"
EVAL_READABLE = {  # also written one by one, for the MLflow UI's tag column
    "heldout_loss": "observatory.eval.heldout_loss",
    "perplexity": "observatory.eval.perplexity",
    "latency_p95_s": "observatory.eval.latency_p95_s",
    "golden_pass_rate": "observatory.eval.golden_pass_rate",
}


@dataclass(frozen=True, slots=True)
class Registration:
    version: str
    created: bool  # False: the fingerprint was already registered


def _missing(e: MlflowException) -> bool:
    return e.error_code == "RESOURCE_DOES_NOT_EXIST"


class Registry:
    """Registry operations on ``name`` through one :class:`MlflowClient`."""

    def __init__(self, client: MlflowClient, name: str) -> None:
        self.client = client
        self.name = name

    def ensure_model(self) -> None:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException as e:
            if not _missing(e):
                raise
            try:
                self.client.create_registered_model(
                    self.name, description="Reference byte-level GPT trained by the Observatory pipeline."
                )
            except MlflowException as again:
                if again.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

    def exists(self) -> bool:
        try:
            self.client.get_registered_model(self.name)
            return True
        except MlflowException as e:
            if _missing(e):
                return False
            raise

    def find(self, fingerprint: str) -> ModelVersion | None:
        """The oldest version carrying ``fingerprint``, if any."""
        escaped = self.name.replace("'", "\\'")
        found = self.client.search_model_versions(
            f"name='{escaped}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
        )
        return min(found, key=lambda mv: int(mv.version)) if found else None

    def register(self, source: str, run_id: str, model_id: str | None, lineage: Lineage) -> Registration:
        """A new version with lineage tags, unless ``lineage`` is already registered."""
        existing = self.find(lineage.fingerprint)
        if existing is not None:
            return Registration(str(existing.version), created=False)
        self.ensure_model()
        tags = {
            FINGERPRINT_TAG: lineage.fingerprint,
            TRAINING_RUN_TAG: run_id,
            DATA_HASH_TAG: lineage.data_hash,
            CODE_VERSION_TAG: lineage.code_version,
            PARAMS_TAG: lineage.params_json(),
        }
        mv = self.client.create_model_version(
            self.name, source=source, run_id=run_id, tags=tags, model_id=model_id,
            description=f"trained in run {run_id}; data {lineage.data_hash[:19]}; code {lineage.code_version}",
        )
        # Two racing registrations of one fingerprint: the oldest version wins, the other is dropped.
        first = self.find(lineage.fingerprint)
        if first is not None and str(first.version) != str(mv.version):
            self.client.delete_model_version(self.name, mv.version)
            return Registration(str(first.version), created=False)
        return Registration(str(mv.version), created=True)

    def version(self, version: str) -> ModelVersion:
        return self.client.get_model_version(self.name, version)

    def alias(self, alias: str) -> str | None:
        """The version ``alias`` points at, or None."""
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as e:
            if _missing(e) or e.error_code == "INVALID_PARAMETER_VALUE":
                return None
            raise

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)

    def clear_alias(self, alias: str, only_if: str | None = None) -> None:
        """Delete ``alias`` (only when it points at ``only_if``, if given)."""
        if only_if is not None and self.alias(alias) != only_if:
            return
        try:
            self.client.delete_registered_model_alias(self.name, alias)
        except MlflowException as e:
            if not _missing(e):
                raise

    def save_eval(self, version: str, summary: EvalSummary) -> None:
        self.client.set_model_version_tag(self.name, version, EVAL_TAG, summary.to_json())
        for field, tag in EVAL_READABLE.items():
            self.client.set_model_version_tag(self.name, version, tag, f"{getattr(summary, field):.6g}")

    def load_eval(self, version: str) -> EvalSummary | None:
        raw = self.version(version).tags.get(EVAL_TAG)
        return EvalSummary.from_json(raw) if raw else None
