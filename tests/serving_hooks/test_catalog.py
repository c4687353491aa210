"""The model catalog as data: the TOML file, what is refused (and how it says so), and the
single-model settings as a one-entry catalog."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpt_observatory.serving_hooks import catalog
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry.settings import ConfigError

FLEET = """
[[models]]
name = "tiny-gpt"
kind = "mlflow"
alias = "champion"

[[models]]
name = "llama-70b"
kind = "upstream"
aliases = ["llama"]
upstream_model = "meta-llama/Llama-3-70B"
max_tokens = 4096
context_tokens = 8192
max_n = 2
fallbacks = ["tiny-gpt"]
scope = "research"
labels = { team = "research" }
replicas = [ { url = "http://10.0.0.1:8000/v1", name = "gpu-node-1" },
             { url = "http://10.0.0.2:8000/v1", name = "gpu-node-2", weight = 2 } ]
[models.pool]
max_ejected_share = 0.5
"""


@pytest.fixture
def settings():
    return load(allow_anonymous=True, max_tokens_limit=1024, max_n=8)


def test_a_fleet_file_is_read_with_names_aliases_bounds_and_pools(tmp_path, settings):
    path = tmp_path / "catalog.toml"
    path.write_text(FLEET)
    cat = catalog.load(path, settings)

    assert [e.name for e in cat] == ["tiny-gpt", "llama-70b"]
    llama = cat.get("llama")
    assert llama is cat.get("llama-70b") and llama.kind == "upstream"
    assert llama.backend_model == "meta-llama/Llama-3-70B" and cat.get("tiny-gpt").backend_model == "tiny-gpt"
    assert [r.name for r in llama.replicas] == ["gpu-node-1", "gpu-node-2"] and llama.replicas[1].weight == 2
    assert llama.pool == {"max_ejected_share": 0.5} and llama.fallbacks == ("tiny-gpt",)
    assert cat.get("meta-llama/Llama-3-70B") is None  # the upstream's id is not a public name

    bounds = cat.bounds(llama)
    assert (bounds.max_tokens_limit, bounds.context_tokens, bounds.max_n) == (4096, 8192, 2)
    assert "llama-70b" in bounds.max_tokens_setting and str(path) in bounds.max_tokens_setting
    default = cat.bounds(cat.get("tiny-gpt"))  # unset: the global settings, named as such
    assert (default.max_tokens_limit, default.max_n, default.context_tokens) == (1024, 8, None)
    assert default.max_tokens_setting == "OBSERVATORY_SERVE_MAX_TOKENS_LIMIT"
    assert default.default_max_tokens is not None and bounds.default_max_tokens is None


@pytest.mark.parametrize(("toml", "says"), [
    ('[[models]]\nname = "a"\nkind = "mlflow"\nreplica = []', ["#1 ('a')", "replica: unknown key"]),
    ('[[models]]\nname = "a"\nkind = "gpu"', ["kind", "'mlflow' or 'upstream'"]),
    ('[[models]]\nname = "a"\nkind = "upstream"', ["either url (one server) or replicas"]),
    ('[[models]]\nname = "a"\nkind = "upstream"\nurl = "http://h/v1"\nalias = "x"\nregistered_model = "b"',
     ["registered_model do not apply to kind 'upstream'"]),
    ('[[models]]\nname = "a"\nkind = "mlflow"\nurl = "http://h/v1"', ["url do not apply to kind 'mlflow'"]),
    ('[[models]]\nname = "a"\nkind = "mlflow"\nfallbacks = ["b"]', ["falls back to 'b'", "does not declare"]),
    ('[[models]]\nname = "a"\nkind = "mlflow"\nfallbacks = ["a"]', ["its own fallback"]),
    ('[[models]]\nname = "a"\nkind = "mlflow"\n[[models]]\nname = "b"\nkind = "mlflow"\naliases = ["a"]',
     ["'a' is used twice"]),
    ('[[models]]\nname = "a"\nkind = "mlflow"\nlabels = { Team = "x" }', ["label key 'Team'"]),
    ('[[models]]\nname = "a"\nkind = "mlflow"\nmax_tokens = 0', ["max_tokens", "greater than or equal to 1"]),
    ('[[models]]\nname = "a b"\nkind = "mlflow"', ["name 'a b'"]),
    ('[[models]]\nname = "a"\nkind = "mlflow"\ncanary_share = 0.1\nshadow_share = 0.1', ["canary_* or shadow_*"]),
    ('models = 3', ["array of tables"]),
    ('[serve]\nport = 1', ["unknown top-level key(s) serve"]),
    ('', ["declares no model"]),
    ('[[models]\nname = "a"', ["not valid TOML"]),
])
def test_a_bad_catalog_is_refused_naming_the_file_the_entry_and_the_key(tmp_path, settings, toml, says):
    path = tmp_path / "catalog.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as refused:
        catalog.load(path, settings)
    message = str(refused.value)
    assert str(path) in message
    for part in says:
        assert part in message


def test_a_missing_file_says_which_setting_names_it(tmp_path, settings):
    with pytest.raises(ConfigError, match="OBSERVATORY_SERVE_CATALOG_FILE"):
        catalog.load(tmp_path / "nope.toml", settings)


def test_the_single_model_settings_are_a_one_entry_catalog():
    upstream = catalog.from_settings(load(backend="upstream", upstream_url="http://127.0.0.1:9/v1", model="up-model",
                                          upstream_models=["up-model", "other"], allow_anonymous=True))
    assert upstream.legacy and len(upstream) == 1
    (entry,) = upstream
    assert (entry.name, entry.kind, entry.aliases) == ("up-model", "upstream", ("other",))
    assert upstream.get("other") is entry and upstream.get("third") is None
    assert upstream.bounds(entry).default_max_tokens is None  # an upstream's own default is not known

    mlflow = catalog.from_settings(load(allow_anonymous=True))
    (entry,) = mlflow
    assert (entry.name, entry.kind) == ("tiny-gpt", "mlflow") and mlflow.bounds(entry).default_max_tokens


def test_the_catalog_file_is_a_setting_of_its_own(monkeypatch, tmp_path):
    monkeypatch.setenv("OBSERVATORY_SERVE_CATALOG_FILE", str(tmp_path / "fleet.toml"))
    monkeypatch.setenv("OBSERVATORY_SERVE_CATALOG_POLL_S", "0.5")
    s = load(allow_anonymous=True)
    assert s.catalog_file == tmp_path / "fleet.toml" and s.catalog_poll_s == 0.5


_names = st.text(string.ascii_lowercase + string.digits + "-.", min_size=1, max_size=12).map(lambda s: "m" + s)


@given(st.lists(st.tuples(_names, st.lists(_names, max_size=3)), min_size=1, max_size=6))
def test_every_name_and_alias_resolves_to_its_entry_or_the_catalog_is_refused(declared):
    s = load(allow_anonymous=True)
    tables = [{"name": name, "kind": "mlflow", "aliases": aliases} for name, aliases in declared]
    every = [n for name, aliases in declared for n in (name, *aliases)]
    if len(set(every)) < len(every):
        with pytest.raises(ConfigError, match="is used twice"):
            catalog.parse({"models": tables}, s)
        return
    cat = catalog.parse({"models": tables}, s)
    for name, aliases in declared:
        for n in (name, *aliases):
            assert cat.get(n).name == name
    assert cat.get("not-" + every[0]) is None or "not-" + every[0] in every
