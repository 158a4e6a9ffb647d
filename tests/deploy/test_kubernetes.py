"""deploy/kubernetes: every kustomization renders (with `kubectl kustomize` where it is
installed, and with scripts/render_kustomize.py, which must agree with it) and every document
is valid against the Kubernetes schemas (kubernetes-validate, offline, strict); the manifests
name only settings Kyma has, and carry the probes, budgets and autoscalers an operator needs."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from core_service.settings import Settings
from scripts.render_kustomize import render

ROOT = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# base/ is rendered whole by the top-level kustomization, which is only `resources: [base]`.
KUSTOMIZATIONS = sorted(
    p.parent for p in ROOT.rglob("kustomization.yaml") if p.parent.name != "base"
)
KUBERNETES_VERSION = "1.30.0"  # the oldest version the manifests are checked against, too


def _key(document: dict[str, Any]) -> tuple[str, str]:
    return document["kind"], document["metadata"]["name"]


def rendered(directory: pathlib.Path) -> list[dict[str, Any]]:
    return sorted(render(directory), key=_key)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_kustomization_renders_to_valid_kubernetes(directory: pathlib.Path) -> None:
    documents = rendered(directory)
    kubectl = shutil.which("kubectl")
    if kubectl is not None:  # the real renderer, where there is one: the fallback agrees
        out = subprocess.run(
            [kubectl, "kustomize", str(directory)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        assert sorted(yaml.safe_load_all(out), key=_key) == documents
    assert documents
    for version in (kubernetes_validate.latest_version(), KUBERNETES_VERSION):
        for document in documents:
            kubernetes_validate.validate(document, version, strict=True)


def containers(documents: list[dict[str, Any]], component: str) -> dict[str, Any]:
    [deployment] = [
        d
        for d in documents
        if d["kind"] == "Deployment"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_the_manifests_name_only_settings_kyma_has() -> None:
    for directory in KUSTOMIZATIONS:
        for document in render(directory):
            if document["kind"] != "Deployment":
                continue
            for container in document["spec"]["template"]["spec"]["containers"]:
                names = [e["name"] for e in container.get("env", [])]
                assert len(names) == len(set(names)), names
                for name in names:
                    assert name.startswith("KYMA_"), name
                    assert name.removeprefix("KYMA_").lower() in Settings.model_fields, name


def test_cores_and_bridges_as_an_operator_needs_them() -> None:
    documents = rendered(ROOT)
    kinds = {_key(d) for d in documents}
    core, bridge = containers(documents, "core"), containers(documents, "bridge")
    assert core["args"] == ["serve", "core"] and bridge["args"] == ["serve", "bridge"]
    # Probes: the core's gRPC health (ready: its database answers), the bridge's HTTP.
    assert core["readinessProbe"]["grpc"] == {"port": 50051}
    assert core["livenessProbe"]["grpc"]["service"] == "kyma.routing.v1.RoutingService"
    assert bridge["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert bridge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Each bridge balances over every core itself: the core Service is headless.
    env = {e["name"]: e for e in bridge["env"]}
    assert env["KYMA_CORE_ADDRESS"]["value"] == "kyma-core:50051"
    [core_service] = [d for d in documents if _key(d) == ("Service", "kyma-core")]
    assert core_service["spec"]["clusterIP"] == "None"
    # Secrets by reference only: none is in the manifests.
    assert not any(kind == "Secret" for kind, _ in kinds)
    core_env = {e["name"]: e for e in core["env"]}
    for name in ("KYMA_DATABASE_URL", "KYMA_REDIS_URL", "KYMA_ADMIN_TOKEN", "KYMA_BRIDGE_TOKEN"):
        assert "secretKeyRef" in core_env[name]["valueFrom"], name
    # The catalogue as a ConfigMap, where KYMA_CATALOG says.
    [catalog] = [d for d in documents if _key(d) == ("ConfigMap", "kyma-catalog")]
    assert "kyma-demo" in yaml.safe_load(catalog["data"]["catalog.yaml"])["models"][0]["name"]
    assert core_env["KYMA_CATALOG"]["value"] == "/etc/kyma/catalog.yaml"
    # Requests from the sizing guide; budgets and autoscalers for both parts.
    for container in (core, bridge):
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert {(kind, "kyma-core"), (kind, "kyma-bridge")} <= kinds


def test_the_pgbouncer_overlay_changes_only_the_cores_database_connection() -> None:
    base, overlay = rendered(ROOT), rendered(ROOT / "overlays" / "pgbouncer")
    assert [_key(d) for d in base] == [_key(d) for d in overlay]
    env = {e["name"]: e for e in containers(overlay, "core")["env"]}
    assert env["KYMA_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "pgbouncer-url"
    assert env["KYMA_DATABASE_PGBOUNCER"]["value"] == "true"
    assert containers(base, "bridge") == containers(overlay, "bridge")
