"""Guards against drift: every service has the same shape, and domain rules stay free of I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from libs.cli.components import COMPONENTS

ROOT = Path(__file__).resolve().parents[2]
SERVICE_MODULES = (
    "__main__.py",
    "settings.py",
    "wiring.py",
    "servicer.py",
    "domain.py",
    "store.py",
    "events.py",
    "README.md",
)
IO_PACKAGES = ("grpc", "nats", "redis", "opentelemetry", "libs.runtime.app", "libs.runtime.events")
BUILT = [c for c in COMPONENTS if (ROOT / c.module.replace(".", "/") / "__main__.py").exists()]


@pytest.mark.parametrize("component", BUILT, ids=lambda c: c.name)
def test_every_service_has_the_same_modules(component):
    folder = ROOT / component.module.replace(".", "/")
    missing = [name for name in SERVICE_MODULES if not (folder / name).exists()]
    assert missing == []


@pytest.mark.parametrize("component", BUILT, ids=lambda c: c.name)
def test_domain_rules_import_no_infrastructure(component):
    tree = ast.parse((ROOT / component.module.replace(".", "/") / "domain.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names]
    assert [m for m in imported if m.startswith(IO_PACKAGES)] == []


def test_every_settings_field_is_in_env_example():
    from libs.runtime.settings import RuntimeSettings

    documented = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line
    }
    expected = {f"SYNCGOV_{name.upper()}" for name in RuntimeSettings.model_fields}
    assert expected - documented == set()


def test_env_example_values_are_valid_settings(clean_env):
    from dotenv import dotenv_values

    from libs.runtime.settings import RuntimeSettings

    values = {k: v for k, v in dotenv_values(ROOT / ".env.example").items() if v is not None}
    for name, value in values.items():
        clean_env.setenv(name, value)
    settings = RuntimeSettings()
    assert settings.caller_tokens == {}
    assert settings.namespace == "sg"


def test_every_proto_domain_has_a_contract_package():
    domains = {p.name for p in (ROOT / "protos" / "syncgov").iterdir() if p.is_dir()}
    assert domains == {"common", "supplier", "po", "receipt", "invoice", "exception", "controlplane"}
    for domain in domains - {"common"}:
        assert list((ROOT / "protos" / "syncgov" / domain / "v1").glob("*_service.proto")), domain
