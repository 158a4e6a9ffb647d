"""The bridge's settings: read once at start-up from `KYMA_*` environment variables (the same
names, and the same optional KYMA_CONFIG file, as the core's; see the README's table)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KYMA_", extra="ignore", frozen=True)

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    core_address: str | None = Field(
        default=None, description="Where the core listens; default grpc_host:grpc_port."
    )
    max_body_bytes: int = 8 * 1024 * 1024
    bridge_metrics_host: str = "127.0.0.1"
    bridge_metrics_port: int | None = Field(
        default=9465, description="Where the bridge serves Prometheus metrics; unset = nowhere."
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Proxies whose X-Forwarded-For gives the client's address (comma-separated, '*' = any).",
    )

    @property
    def core_target(self) -> str:
        return self.core_address or f"{self.grpc_host}:{self.grpc_port}"
