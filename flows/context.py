"""What the flows of one run share: the settings, validated once; the MLflow store, connected once;
the corpus, read and hashed once (on first use: rollback, canary and guard never need it).

The flow a run starts with makes the context; every subflow it calls takes it as ``context``
instead of parsing settings and connecting again. A flow started on its own makes its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import SecretStr

from gpt_observatory.flows.lineage import Lineage, code_version
from gpt_observatory.flows.model.evaluation import eval_data_id, golden_prompts
from gpt_observatory.flows.model.training import Corpus, load_corpus
from gpt_observatory.flows.settings import CanarySettings, PipelineSettings, load_canary_settings, load_settings
from gpt_observatory.flows.stores import connect


@dataclass(frozen=True, eq=False)
class RunContext:
    """One run's settings and store; its corpus and what is derived from it, computed once.

    Only the fields travel as a subflow's recorded parameters: the settings, and the tracking URI
    masked (a ``SecretStr``: Prefect records ``**********``, never credentials inside the URI); the
    corpus stays in this process.
    """

    settings: PipelineSettings
    store_uri: SecretStr = field(repr=False)
    canary: CanarySettings | None = None  # the canary and guard flows' settings

    @classmethod
    def start(
        cls, model_name: str | None, overrides: dict[str, Any] | None, canary: dict[str, Any] | None = None
    ) -> RunContext:
        """Validate the settings (``canary``: the canary settings too), then connect the store.

        Raises :class:`~gpt_observatory.telemetry.ConfigError` naming the key before anything
        touches the registry.
        """
        settings = load_settings(**{**(overrides or {}), "model_name": model_name})
        live = load_canary_settings(**canary) if canary is not None else None
        return cls(settings, SecretStr(connect(settings).tracking_uri), live)

    @property
    def tracking_uri(self) -> str:
        return self.store_uri.get_secret_value()

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    @cached_property
    def corpus(self) -> Corpus:
        return load_corpus(heldout_fraction=self.settings.heldout_fraction)

    @cached_property
    def lineage(self) -> Lineage:
        """What a version trained in this run is made of (its fingerprint is the idempotency key)."""
        return Lineage(data_hash=self.corpus.data_hash, code_version=code_version(), params=self.settings.train_params())

    @cached_property
    def eval_data(self) -> str:
        """The id of this run's evaluation set: stored figures with another id are stale."""
        return eval_data_id(self.corpus, self.settings.heldout_fraction, golden_prompts())
