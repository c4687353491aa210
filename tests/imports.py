"""Where every import of a shipped module comes from: the standard library, the project, or the
distribution that installs it, resolved without importing anything (``tests/test_packaging.py``)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

NAMESPACE = "gpt_observatory"
REPO = Path(__file__).resolve().parent.parent


def normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


@dataclass(frozen=True, slots=True)
class Declared:
    """The distributions pyproject.toml declares: base dependencies and each optional extra's."""

    base: frozenset[str]
    extras: dict[str, frozenset[str]]

    @classmethod
    def read(cls, pyproject: Path = REPO / "pyproject.toml") -> Declared:
        project = tomllib.loads(pyproject.read_text())["project"]

        def names(requirements: Iterable[str]) -> frozenset[str]:
            return frozenset(normalize(Requirement(r).name) for r in requirements)

        return cls(names(project["dependencies"]),
                   {extra: names(reqs) for extra, reqs in project.get("optional-dependencies", {}).items()})

    def extras_of(self, distribution: str) -> list[str]:
        return sorted(extra for extra, dists in self.extras.items() if distribution in dists)


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # dotted, absolute
    file: Path
    line: int


def shipped_sources(packages: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """``(dotted module name, file)`` of every module in the wheel, from pyproject's package-dir."""
    for package, folder in packages.items():
        root = REPO / folder
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root).with_suffix("")
            inner = [p for p in relative.parts if p != "__init__"]
            # a mapped subpackage's folder is listed on its own; don't walk it twice
            if package == NAMESPACE and inner and inner[0] in {p.rsplit(".", 1)[-1] for p in packages if p != NAMESPACE}:
                continue
            yield ".".join([package, *inner]), path


def imports_of(module: str, path: Path) -> Iterator[Import]:
    """Every import statement in ``path``, wherever it stands (module level, function, try block)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            # ``from a import b``: b may be a submodule (``from opentelemetry import trace``)
            for alias in node.names:
                yield Import(f"{source}.{alias.name}", path, node.lineno)


@cache
def _owners() -> dict[Path, frozenset[str]]:
    """Installed file -> the distributions that install it (mlflow, mlflow-skinny and mlflow-tracing
    all ship ``mlflow/__init__.py``)."""
    owners: dict[Path, set[str]] = {}
    for dist in metadata.distributions():
        for file in dist.files or ():
            if file.suffix == ".py" or file.name.endswith((".so", ".pyd")):
                owners.setdefault(Path(str(dist.locate_file(file))).resolve(), set()).add(normalize(dist.metadata["Name"]))
    return {path: frozenset(names) for path, names in owners.items()}


def _find(part: str, locations: list[str]) -> tuple[Path | None, list[str]]:
    """(file of module ``part`` in ``locations``, its package folders): a plain search of the disk."""
    folders: list[str] = []
    for location in locations:
        base = Path(location)
        if (base / part / "__init__.py").is_file():
            return base / part / "__init__.py", [str(base / part)]
        if (base / f"{part}.py").is_file():
            return base / f"{part}.py", []
        if compiled := sorted(base.glob(f"{part}.*.so")) + sorted(base.glob(f"{part}.*.pyd")):
            return compiled[0], []
        if (base / part).is_dir():
            folders.append(str(base / part))  # a namespace package: keep looking in every location
    return None, folders


def distributions_of(module: str) -> frozenset[str]:
    """The distributions that install ``module`` (found on disk, never imported); empty if none."""
    locations, owner_file = list(sys.path), None
    for part in module.split("."):
        file, folders = _find(part, locations)
        if file is None and not folders:
            break  # an attribute (``from x import name``) or a module made at run time
        owner_file = file or owner_file
        locations = folders
        if file is not None and not folders:
            break
    return frozenset() if owner_file is None else _owners().get(owner_file.resolve(), frozenset())


@dataclass(frozen=True, slots=True)
class Finding:
    at: Import
    problem: str

    def __str__(self) -> str:
        return f"{self.at.file.relative_to(REPO) if self.at.file.is_relative_to(REPO) else self.at.file}:" \
               f"{self.at.line}: import {self.at.module}: {self.problem}"


GENERIC_TOP_LEVEL = frozenset({"telemetry", "serving_hooks", "flows", "dashboards", "observatory"})


def check(sources: Iterable[tuple[str, Path]], declared: Declared) -> tuple[list[Finding], set[str]]:
    """Findings for imports that do not resolve to the standard library, the project, a base
    dependency or an optional extra; and the optional distributions the sources import."""
    findings: list[Finding] = []
    optional: set[str] = set()
    for module, path in sources:
        for imp in imports_of(module, path):
            top = imp.module.split(".")[0]
            if top in sys.stdlib_module_names or top == NAMESPACE:
                continue
            if top in GENERIC_TOP_LEVEL:
                findings.append(Finding(imp, f"{top!r} is not a top-level package: import {NAMESPACE}.{imp.module}"))
                continue
            owners = distributions_of(imp.module)
            dist = min(owners, default="")
            if not owners:
                findings.append(Finding(imp, "installed by no distribution in this environment"))
            elif owners & declared.base:
                continue
            elif extras := declared.extras_of(dist):
                if extras == ["test"]:
                    findings.append(Finding(imp, f"{dist} is a test-only dependency (extra 'test'); "
                                                 "README command 1 does not install it"))
                else:
                    optional.add(dist)
            else:
                findings.append(Finding(imp, f"{dist} is not a declared dependency (add it to "
                                             "[project].dependencies or import it only through one that is)"))
    return findings, optional
