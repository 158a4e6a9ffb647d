"""deploy/compose.yaml: valid against the Compose specification (its JSON schema, vendored by
check-jsonschema), and a cluster that holds together — the files it mounts exist, the bridges'
one core address reaches both cores, nginx's upstreams are the bridges, only settings Kyma has
are set, and the nginx configuration (with the proxy settings the loopback cluster test runs)
is one nginx accepts."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from core_service.settings import Settings

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_compose_is_valid_against_the_compose_specification() -> None:
    checker = pathlib.Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_cluster_holds_together() -> None:
    spec = compose()
    services = spec["services"]
    cores = {n: s for n, s in services.items() if s.get("command") == ["serve", "core"]}
    bridges = {n: s for n, s in services.items() if s.get("command") == ["serve", "bridge"]}
    assert len(cores) == 2 and len(bridges) == 2
    # The bridges' one address is a name every core answers to.
    for bridge in bridges.values():
        host = bridge["environment"]["KYMA_CORE_ADDRESS"].rsplit(":", 1)[0]
        assert all(host in core["networks"]["default"]["aliases"] for core in cores.values())
    # nginx balances over exactly the bridges, on the port they listen on.
    nginx_conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    upstreams = {
        line.split()[1]
        for line in nginx_conf.splitlines()
        if line.strip().startswith("server ") and line.strip().endswith(";")
    }
    assert upstreams == {f"{name}:8000" for name in bridges}
    assert services["lb"]["ports"] == ["127.0.0.1:${KYMA_PORT:-8080}:8080"]
    # Every mounted file is in the repository; secrets and configs name real files.
    for volume in services["lb"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).is_file(), volume
    for section in ("secrets", "configs"):
        for name, entry in spec[section].items():
            assert (DEPLOY / entry["file"]).is_file(), name
    # Kyma reads /run/secrets/kyma_<setting>: every kyma_ secret names a setting.
    for name in spec["secrets"]:
        if name.startswith("kyma_"):
            assert name.removeprefix("kyma_") in Settings.model_fields, name
    # Only settings Kyma has are set.
    for service in (*cores.values(), *bridges.values()):
        for name in service["environment"]:
            assert name.removeprefix("KYMA_").lower() in Settings.model_fields, name
    # Both cores use one database and the admin token from a secret.
    for core in cores.values():
        assert {"kyma_database_url", "kyma_admin_token"} <= set(core["secrets"])
    catalog = yaml.safe_load((DEPLOY / "catalog.yaml").read_text())
    assert [m["name"] for m in catalog["models"]] == ["kyma-demo"]


def test_nginx_accepts_the_configuration(tmp_path: pathlib.Path) -> None:
    """`nginx -t` on deploy/nginx/nginx.conf, its bridges' names made local addresses (nginx
    resolves them at start) and its paths moved into a temporary directory."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not pathlib.Path(binary).is_file():
        pytest.skip("nginx is not installed (apt package nginx; ./scripts/setup-system)")
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    conf = conf.replace("bridge-1:8000", "127.0.0.1:1").replace("bridge-2:8000", "127.0.0.1:2")
    # Temporary paths first: the checkout itself may live under /tmp.
    conf = conf.replace("/tmp/", f"{tmp_path}/").replace("listen 8080", "listen 127.0.0.1:1")
    conf = conf.replace("/etc/nginx/kyma-proxy.conf", str(DEPLOY / "nginx" / "kyma-proxy.conf"))
    conf = f"error_log {tmp_path}/error.log;\n" + conf
    (tmp_path / "nginx.conf").write_text(conf)
    result = subprocess.run(
        [binary, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
