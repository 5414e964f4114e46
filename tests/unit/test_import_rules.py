"""The layout's import rules (README "Layout"), read from the source with ``ast``: no import is executed.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a rule broken only
for the type checker is still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "proactive"

# The domain: the flows and the shared vocabulary. No SDK, no adapter, no trigger.
DOMAIN = (
    "proactive.bot",
    "proactive.broadcast",
    "proactive.delivery",
    "proactive.install",
    "proactive.limiter",
    "proactive.storage",
    "proactive.csv_export",
    "proactive.errors",
    "proactive.function_names",
    "proactive.json_input",
    "proactive.models",
    "proactive.outbound",
    "proactive.settings",
    "proactive.telemetry",
)
ADAPTERS = "proactive.adapters"
ORCHESTRATION = "proactive.orchestration"
FUNCTIONS = "proactive.functions"
COMPOSITION = "proactive.composition"
# The only modules that may import azure.functions: the triggers, the composition root and the app.
AZURE_FUNCTIONS_ALLOWED = (FUNCTIONS, COMPOSITION, "function_app")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> list[tuple[str, Path]]:
    found = [(_module_name(p), p) for p in sorted(PACKAGE.rglob("*.py"))]
    return [*found, ("function_app", ROOT / "function_app.py")]


def _devhost_modules() -> list[tuple[str, Path]]:
    return [(_module_name(p), p) for p in sorted((ROOT / "devhost").rglob("*.py"))]


def _imports(path: Path) -> Iterator[str]:
    module = _module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            else:
                target = node.module or ""
            yield target
            # `from proactive import composition` imports the module proactive.composition
            yield from (f"{target}.{alias.name}" for alias in node.names)


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(sources: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {target}"
        for module, path in _modules()
        if _within(module, *sources)
        for target in sorted(set(_imports(path)))
        if _within(target, *forbidden)
    ]


def test_the_layout_packages_exist() -> None:
    """A rule over a package that was renamed away would pass for nothing."""
    names = {module for module, _ in _modules()}
    for package in (*DOMAIN, ADAPTERS, ORCHESTRATION, FUNCTIONS, COMPOSITION):
        assert package in names, package


def test_the_domain_imports_no_sdk_adapter_or_trigger() -> None:
    assert _violations(DOMAIN, ("azure", ADAPTERS, FUNCTIONS, COMPOSITION, "function_app")) == []


def test_the_limiter_is_pure() -> None:
    """The limiter is a state machine behind an entity: it reads only its own modules and the models."""
    allowed = ("proactive.limiter", "proactive.models")
    imports = [
        f"{module} imports {target}"
        for module, path in _modules()
        if _within(module, "proactive.limiter")
        for target in _imports(path)
        if _within(target, "proactive") and target != "proactive" and not _within(target, *allowed)
    ]
    assert imports == []


def test_storage_depends_on_the_models_and_the_pure_limiter_only() -> None:
    allowed = (
        "proactive.storage",
        "proactive.models",
        "proactive.errors",
        "proactive.json_input",
        "proactive.limiter",  # a pure state machine: the thread windows' store keeps its log
    )
    imports = [
        f"{module} imports {target}"
        for module, path in _modules()
        if _within(module, "proactive.storage")
        for target in _imports(path)
        if _within(target, "proactive") and target != "proactive" and not _within(target, *allowed)
    ]
    assert imports == []


def test_orchestrators_import_no_adapter_or_trigger_and_only_the_durable_sdk() -> None:
    assert _violations((ORCHESTRATION,), (ADAPTERS, FUNCTIONS, COMPOSITION, "function_app")) == []
    sdk = [
        f"{module} imports {target}"
        for module, path in _modules()
        if _within(module, ORCHESTRATION)
        for target in _imports(path)
        if _within(target, "azure") and not _within(target, "azure.durable_functions")
    ]
    assert sdk == []


def test_adapters_import_no_trigger_orchestrator_or_composition_root() -> None:
    assert _violations((ADAPTERS,), (FUNCTIONS, ORCHESTRATION, COMPOSITION, "function_app")) == []


def test_only_the_triggers_and_the_composition_root_import_azure_functions() -> None:
    outside = [
        f"{module} imports {target}"
        for module, path in _modules()
        if not _within(module, *AZURE_FUNCTIONS_ALLOWED)
        for target in _imports(path)
        if _within(target, "azure.functions")
    ]
    assert outside == []


def test_the_product_never_imports_devhost_or_tests() -> None:
    assert _violations(("proactive", "function_app"), ("devhost", "tests")) == []


@pytest.mark.parametrize(
    "package", sorted(p.parent for p in PACKAGE.rglob("__init__.py")), ids=lambda p: p.name
)
def test_every_package_says_what_it_owns_and_may_import(package: Path) -> None:
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert docstring, f"{package.name}/__init__.py has no docstring"
    assert "May import:" in docstring, f"{package.name}/__init__.py does not say what it may import"


def test_the_devhost_engine_never_imports_the_host_and_the_triggers_never_import_the_server() -> None:
    """The host drives the Durable engine and its triggers; nothing points back, so there is no cycle."""
    back = [
        f"{module} imports {target}"
        for module, path in _devhost_modules()
        for target in _imports(path)
        if (_within(module, "devhost.durable") and _within(target, "devhost.host"))
        or (
            (module == "devhost.host.triggers" and _within(target, "devhost.host.server", "devhost.host"))
            and target != "devhost.host.triggers"
        )
    ]
    assert back == []
