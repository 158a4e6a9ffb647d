"""The settings model: secret files beside the environment and the config file, and how the
bridge names its cores."""

from __future__ import annotations

import pathlib
import re

import pytest
from pydantic import ValidationError

from core_service.settings import Settings, grpc_target


def test_secret_files_set_settings_below_the_environment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "kyma_admin_token").write_text("from-a-file\n")
    (secrets / "kyma_database_url").write_text("postgresql://kyma:pw@db:5432/kyma\n")
    (secrets / "postgres_password").write_text("not a setting of Kyma's\n")
    config = tmp_path / "kyma.yaml"
    config.write_text("admin_token: from-the-config-file\nhttp_port: 9000\n")
    monkeypatch.setenv("KYMA_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("KYMA_CONFIG", str(config))
    for name in ("KYMA_ADMIN_TOKEN", "KYMA_DATABASE_URL", "KYMA_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "from-a-file"  # over the config file
    assert settings.database_url == "postgresql://kyma:pw@db:5432/kyma"
    assert settings.http_port == 9000
    monkeypatch.setenv("KYMA_ADMIN_TOKEN", "from-the-environment")
    assert Settings().admin_token.get_secret_value() == "from-the-environment"  # type: ignore[union-attr]
    # No such directory: nothing is read from it, and nothing is said.
    monkeypatch.setenv("KYMA_SECRETS_DIR", str(tmp_path / "none"))
    assert Settings().database_url is None


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("kyma-core:50051", "kyma-core:50051"),  # a name: every address it resolves to
        ("dns:///kyma-core.kyma.svc:50051", "dns:///kyma-core.kyma.svc:50051"),
        ("10.0.0.5:50051, 10.0.0.6:50051", "ipv4:10.0.0.5:50051,10.0.0.6:50051"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
    ],
)
def test_core_addresses_become_one_grpc_target(address: str, target: str) -> None:
    assert grpc_target(address) == target
    assert Settings(core_address=address).core_target == target


@pytest.mark.parametrize(
    ("address", "streams"),
    [
        (None, 1),  # this machine's core
        ("127.0.0.1:50051", 1),
        ("[::1]:50051", 1),
        ("unix:/run/kyma/core.sock", 1),
        ("10.0.0.5:50051, 10.0.0.6:50051, 10.0.0.7:50051", 3),
        ("kyma-core:50051", 2),  # a name may resolve to several cores
        ("dns:///kyma-core.kyma.svc:50051", 2),
    ],
)
def test_a_bridge_keeps_a_relay_stream_per_core_it_is_given(
    address: str | None, streams: int
) -> None:
    assert Settings(core_address=address).relay_streams == streams
    assert Settings(core_address=address, bridge_relay_streams=4).relay_streams == 4
    assert Settings(core_address=address, bridge_relay_streams=0).relay_streams == 0


def test_by_default_the_core_on_this_machine() -> None:
    assert Settings(grpc_host="10.1.2.3", grpc_port=7).core_target == "10.1.2.3:7"
    # A core listening on every address (as in the container image) is reached on loopback.
    assert Settings(grpc_host="0.0.0.0", grpc_port=7).core_target == "127.0.0.1:7"
    assert Settings(grpc_host="::", grpc_port=7).core_target == "[::1]:7"


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("core-1:50051,core-2:50051", "give one name that resolves to all of them"),
        ("10.0.0.5:50051,[::1]:50051", "all IPv4 or all IPv6"),
        ("10.0.0.5,10.0.0.6:50051", "is not IP:port"),
        (":50051", "names no host"),
    ],
)
def test_a_core_address_grpc_cannot_use_is_refused_at_start_up(address: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Settings(core_address=address)


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("redis_url", "http://cache:6379", "must start with redis://, rediss:// or unix://"),
        ("database_url", "mysql://db/kyma", "must start with postgresql:// (or postgres://)"),
    ],
)
def test_a_url_of_the_wrong_kind_is_refused_at_start_up(
    setting: str, value: str, said: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(said)):
        Settings(**{setting: value})


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("redis_url", "redis://127.0.0.1:6379/0"),
        ("redis_url", "rediss://cache:6380/0"),
        ("redis_url", "unix:///run/redis.sock"),
        ("database_url", "postgresql://kyma@db/kyma"),
        ("database_url", "postgres://kyma@db/kyma"),
        ("database_url", "postgresql+asyncpg://kyma@db/kyma"),
        ("database_url", "sqlite:////var/lib/kyma/kyma.db"),
    ],
)
def test_urls_of_the_right_kind_are_taken(setting: str, value: str) -> None:
    assert getattr(Settings(**{setting: value}), setting) == value
