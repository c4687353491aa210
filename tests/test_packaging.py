"""One installable namespace: every shipped import resolves to something README command 1 installs,
the wheel names one top-level package and holds every shipped file, and a missing optional extra
is a one-line error that names it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.imports import NAMESPACE, REPO, Declared, check, imports_of, shipped_sources

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
COMMANDS = ("demo", "gpu", "serve", "keys", "idp", "pipeline", "dashboards")


def test_every_shipped_import_is_the_standard_library_the_project_or_a_base_dependency():
    findings, optional = check(shipped_sources(PACKAGE_DIR), Declared.read())

    assert [str(f) for f in findings] == []
    assert optional == {"torch"}  # imported lazily: see the no-torch tests below


def test_the_walk_covers_every_shipped_module():
    walked = {path for _, path in shipped_sources(PACKAGE_DIR)}
    on_disk = {p for folder in PACKAGE_DIR.values() for p in (REPO / folder).rglob("*.py")}
    assert walked == on_disk


def test_a_test_only_import_anywhere_in_a_shipped_module_is_named(tmp_path):
    module = tmp_path / "client.py"
    module.write_text(
        "import json\n"
        "from gpt_observatory.telemetry import names\n"
        "from telemetry import names as clash\n"
        "def talk():\n"
        "    import openai_looking_thing\n"
        "    import pytest\n"
        "    from hypothesis import given\n"
    )
    findings, _ = check([(f"{NAMESPACE}.demo.client", module)], Declared.read())

    problems = {f.at.module.split(".")[0]: f.problem for f in findings}
    assert set(problems) == {"telemetry", "openai_looking_thing", "pytest", "hypothesis"}
    assert "test-only" in problems["pytest"] and "test-only" in problems["hypothesis"]
    assert "gpt_observatory.telemetry" in problems["telemetry"]
    assert "no distribution" in problems["openai_looking_thing"]


def test_relative_imports_resolve_inside_the_project(tmp_path):
    package = tmp_path / "__init__.py"
    package.write_text("from . import names\nfrom ..flows import gates\n")
    assert [i.module for i in imports_of(f"{NAMESPACE}.telemetry", package)] == [
        f"{NAMESPACE}.telemetry.names", f"{NAMESPACE}.flows.gates"]


def _tracked(*paths: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split("\0")
    return [f for f in listed if f and (REPO / f).is_file()]  # not those deleted in the working tree


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    # Built from a copy of the tracked files: setuptools reuses ./build, where a module since
    # moved or deleted would linger and ship.
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for file in _tracked():
        (source / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / file, source / file)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [built] = out.glob("*.whl")
    return zipfile.ZipFile(built)


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    [path] = [n for n in wheel.namelist() if n.endswith(".dist-info/" + name)]
    return wheel.read(path).decode()


def test_the_wheel_names_one_top_level_package(wheel):
    assert _dist_info(wheel, "top_level.txt").split() == [NAMESPACE]
    tops = {n.split("/")[0] for n in wheel.namelist() if ".dist-info/" not in n}
    assert tops == {NAMESPACE}


def test_the_wheel_holds_every_tracked_shipped_file_at_its_namespace_path(wheel):
    expected = set()
    for file in _tracked(*PACKAGE_DIR.values()):
        package, folder = max(((p, f) for p, f in PACKAGE_DIR.items() if file.startswith(f + "/")),
                              key=lambda item: len(item[1]))
        expected.add("/".join([*package.split("."), file.removeprefix(folder + "/")]))
    missing = expected - set(wheel.namelist())
    assert sorted(missing) == []


def test_entry_points_and_prefect_deployments_name_the_namespace(wheel):
    entry_points = _dist_info(wheel, "entry_points.txt")
    values = [line.split("=", 1)[1].strip() for line in entry_points.splitlines() if "=" in line]
    assert values and all(v.startswith(NAMESPACE + ".") for v in values), entry_points
    assert "observatory = gpt_observatory.cli:main" in entry_points

    import yaml

    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    for deployment in deployments:
        module, _, function = deployment["entrypoint"].rpartition(".")
        assert module.startswith(NAMESPACE + "."), deployment["entrypoint"]
        assert hasattr(__import__(module, fromlist=[function]), function), deployment["entrypoint"]


def _without_torch(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which ``import torch`` fails, as without the extra."""
    blocked = "import sys\nsys.modules['torch'] = None\n" + code
    return subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120, cwd="/")


def test_the_command_line_and_every_subcommand_load_without_the_torch_extra():
    script = (
        "from typer.testing import CliRunner\n"
        "from gpt_observatory.cli import _register, app\n"
        "_register()\n"
        f"for args in [['--help'], *[[c, '--help'] for c in {list(COMMANDS)!r}]]:\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output, result.exception)\n"
        "import gpt_observatory.telemetry, gpt_observatory.serving_hooks.app, gpt_observatory.dashboards\n"
        "print('ok')\n"
    )
    done = _without_torch(script)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_the_demo_without_the_torch_extra_names_the_extra_in_one_line():
    done = _without_torch("from gpt_observatory.cli import main\nsys.argv = ['observatory', 'demo']\nmain()\n")

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "observatory: observatory demo (it trains the reference model) needs 'torch', which the 'torch' extra "
        "installs: pip install torch==2.13.0 'gpt-observatory[torch]'"]


def test_an_optional_import_error_deep_in_a_command_is_turned_into_the_same_hint():
    script = (
        "import typer\n"
        "from gpt_observatory import cli\n"
        "@cli.app.command('needs-torch')\n"
        "def needs_torch():\n"
        "    import torch\n"
        "sys.argv = ['observatory', 'needs-torch']\n"
        "cli.main()\n"
    )
    done = _without_torch(script)
    assert done.returncode == 1
    assert "pip install torch==2.13.0 'gpt-observatory[torch]'" in done.stderr
    assert "Traceback" not in done.stderr
