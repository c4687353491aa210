"""Build the backends a catalog entry describes: a :class:`ModelRouter` per served model.

The single-model settings are served exactly as before (:func:`build_router` on them); an ``mlflow``
entry or a one-``url`` ``upstream`` entry is those same settings with the entry's keys put in (so
canary, shadow and proxying behave as they always did); an ``upstream`` entry with ``replicas`` is a
:class:`~serving_hooks.backends.pool.ReplicaPool`. An ``upstream`` entry with ``shadow_*`` is its
champion (one server or the pool) behind a :class:`~serving_hooks.backends.shadow.ShadowRouter` whose
challenger is a pool of the ``shadow_replicas`` (named ``<name>/shadow``, under the entry's pool
policy), asked under ``shadow_upstream_model``; each side's version label is the model id it is asked under.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from gpt_observatory import telemetry
from gpt_observatory.serving_hooks.backends.base import ModelBackend, ModelRouter
from gpt_observatory.serving_hooks.catalog import Catalog, ModelEntry, Replica
from gpt_observatory.serving_hooks.inference import GenAIHooks
from gpt_observatory.serving_hooks.settings import ServeSettings
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.settings import ConfigError


def served_models(settings: ServeSettings) -> frozenset[str]:
    """The model names callers may use: the served model and the upstream's named ones."""
    return frozenset([settings.model, *settings.upstream_models])


def _capture(settings: ServeSettings) -> bool:
    capture = settings.capture_content
    if capture is None:
        handle = telemetry.current()
        capture = handle.settings.capture_content if handle is not None else False
    return capture


def build_hooks(settings: ServeSettings) -> GenAIHooks:
    capture = _capture(settings)
    if settings.backend == "upstream":
        url = urlsplit(settings.upstream_url or "")
        return GenAIHooks(
            "client", provider=settings.upstream_provider, capture_content=capture,
            server_address=url.hostname, server_port=url.port, models=served_models(settings),
        )
    return GenAIHooks("server", capture_content=capture)


def build_backend(settings: ServeSettings, hooks: GenAIHooks) -> ModelBackend:
    if settings.backend == "upstream":
        from gpt_observatory.serving_hooks.backends.upstream import UpstreamBackend

        key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        return UpstreamBackend(
            hooks, settings.upstream_url or "", api_key=key,
            connect_timeout_s=settings.upstream_connect_timeout_s, timeout_s=settings.upstream_timeout_s,
            max_connections=settings.upstream_max_connections,
            forward_baggage_keys=settings.forward_baggage_keys, forward_tracestate_keys=settings.forward_tracestate_keys,
        )
    from gpt_observatory.serving_hooks.backends.mlflow import MlflowBackend

    return MlflowBackend(
        hooks, settings.model, alias=settings.alias, tracking_uri=settings.tracking_uri,
        poll_interval_s=settings.poll_interval_s, workers=settings.generation_threads,
        energy_interval_s=settings.gpu_energy_interval_s,
    )


def build_router(settings: ServeSettings, hooks: GenAIHooks) -> ModelRouter:
    """The champion alone, or champion and challenger behind a canary or a shadow router when one is configured."""
    champion = build_backend(settings, hooks)
    if not (settings.canary or settings.shadow):
        return ModelRouter({names.MODEL_ROLE_CHAMPION: champion})
    from gpt_observatory.serving_hooks.backends.mlflow import MlflowBackend

    challenger = MlflowBackend(
        hooks, settings.model, alias=settings.challenger_alias, role=names.MODEL_ROLE_CHALLENGER,
        tracking_uri=settings.tracking_uri, poll_interval_s=settings.poll_interval_s, workers=settings.generation_threads,
        optional=True, energy_interval_s=settings.gpu_energy_interval_s,
    )
    if settings.shadow:
        from gpt_observatory.serving_hooks.backends.shadow import ShadowPolicy, ShadowRouter

        shadow = ShadowPolicy.of(settings.shadow_share, settings.shadow_tenants, queue_size=settings.shadow_queue_size,
                                 concurrency=settings.generation_threads)
        return ShadowRouter(champion, challenger, shadow)  # type: ignore[arg-type]  # mlflow: in-process
    from gpt_observatory.serving_hooks.backends.canary import CanaryPolicy, CanaryRouter

    policy = CanaryPolicy.of(settings.canary_share, settings.canary_tenants, settings.canary_sticky)
    return CanaryRouter(champion, challenger, policy)  # type: ignore[arg-type]  # mlflow: in-process


def build_entry(entry: ModelEntry, catalog: Catalog) -> ModelRouter:
    """The (unstarted) router serving ``entry``."""
    settings = catalog.settings
    if catalog.legacy:
        return build_router(settings, build_hooks(settings))
    if entry.kind == "mlflow":
        own = settings.model_copy(update={
            "backend": "mlflow", "model": entry.backend_model, "alias": entry.alias,
            "canary_share": entry.canary_share, "canary_tenants": list(entry.canary_tenants),
            "canary_sticky": entry.canary_sticky, "challenger_alias": entry.challenger_alias,
            "shadow_share": entry.shadow_share, "shadow_tenants": list(entry.shadow_tenants),
        })
        return build_router(own, build_hooks(own))
    key = _key(entry.api_key, entry.api_key_env, f"model {entry.name!r}") or settings.upstream_api_key
    challenger_model = entry.shadow_upstream_model or entry.backend_model
    # what a model label may say (closed set)
    labels = sorted({*entry.names, entry.backend_model, *((challenger_model,) if entry.shadow else ())})
    provider = entry.provider or settings.upstream_provider
    if entry.url is not None:
        own = settings.model_copy(update={
            "backend": "upstream", "model": entry.name, "upstream_url": entry.url, "upstream_models": labels,
            "upstream_api_key": key, "upstream_provider": provider, "canary_share": 0.0, "canary_tenants": [],
            "shadow_share": 0.0, "shadow_tenants": [],
        })
        router = build_router(own, build_hooks(own))
        if not entry.shadow:
            return router
        champion, hooks = router.champion, GenAIHooks("client", provider=provider,
                                                      capture_content=_capture(settings), models=labels)
    else:
        hooks = GenAIHooks("client", provider=provider, capture_content=_capture(settings), models=labels)
        champion = _pool(entry.name, entry.replicas, entry, catalog, hooks, key)
        if not entry.shadow:
            return ModelRouter({names.MODEL_ROLE_CHAMPION: champion})
    from gpt_observatory.serving_hooks.backends.shadow import ShadowPolicy, ShadowRouter

    challenger = _pool(f"{entry.name}/shadow", entry.shadow_replicas, entry, catalog, hooks, key)
    challenger.role = names.MODEL_ROLE_CHALLENGER
    policy = ShadowPolicy.of(entry.shadow_share, entry.shadow_tenants, queue_size=settings.shadow_queue_size,
                             concurrency=entry.shadow_concurrency, timeout_s=settings.upstream_timeout_s)
    versions = {names.MODEL_ROLE_CHAMPION: entry.backend_model, names.MODEL_ROLE_CHALLENGER: challenger_model}
    return ShadowRouter(champion, challenger, policy, versions=versions, challenger_model=challenger_model)


def _pool(name: str, replicas: tuple[Replica, ...], entry: ModelEntry, catalog: Catalog, hooks: GenAIHooks,
          key: SecretStr | None) -> Any:
    """The replica pool ``name`` of ``entry`` (its champion's, or its shadow challenger's), under the entry's
    [models.pool] policy."""
    from gpt_observatory.serving_hooks.backends.pool import PoolPolicy, ReplicaPool, ReplicaSpec

    settings = catalog.settings
    specs = [ReplicaSpec(url=r.url, name=_replica_name(r), weight=r.weight,
                         api_key=_plain(_key(r.api_key, r.api_key_env, f"a replica of {entry.name!r}") or key))
             for r in replicas]
    try:
        policy = PoolPolicy(**entry.pool)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{catalog.source}: model {entry.name!r} [models.pool]: {e}") from None
    try:
        return ReplicaPool(
            hooks, name, specs, policy, connect_timeout_s=settings.upstream_connect_timeout_s,
            timeout_s=settings.upstream_timeout_s, max_connections=settings.upstream_max_connections,
            forward_baggage_keys=settings.forward_baggage_keys, forward_tracestate_keys=settings.forward_tracestate_keys,
        )
    except ValueError as e:  # replica names that are not unique
        raise ConfigError(f"{catalog.source}: {e}") from None


def _replica_name(replica: Replica) -> str:
    if replica.name:
        return replica.name
    url = urlsplit(replica.url)
    return f"{url.hostname}:{url.port or (443 if url.scheme == 'https' else 80)}"


def _key(key: SecretStr | None, env: str | None, what: str) -> SecretStr | None:
    """A key given in the catalog, or read from the variable it names (which must be set)."""
    if key is not None or env is None:
        return key
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"the api_key_env of {what} names {env}, which is not set")
    return SecretStr(value)


def _plain(key: SecretStr | None) -> Any:
    return key.get_secret_value() if key is not None else None
