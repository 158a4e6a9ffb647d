"""Kyma's settings, one model for every process (core, bridge and CLI): read once at start-up
from `KYMA_*` environment variables, secret files (`KYMA_SECRETS_DIR`, default /run/secrets:
`kyma_admin_token` holds KYMA_ADMIN_TOKEN) and an optional YAML file named by `KYMA_CONFIG`,
in that order of precedence, then passed down explicitly. Nothing reads the environment after
start-up. Each process reads the fields it needs; the README's configuration table says
which process uses which, and keeps in step with this file.

This module imports nothing of Kyma's but the shared value types, so the bridge can use it
without importing the core.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import secrets
from decimal import Decimal
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from core_service.values import DEFAULT_TIERS, Tier


class _YamlFileSource(PydanticBaseSettingsSource):
    """Settings from the YAML file named by KYMA_CONFIG: keys are the names without prefix."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        if path:
            loaded = yaml.safe_load(pathlib.Path(path).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: the config file must be a mapping of setting names")
            self._values = {str(k).lower(): v for k, v in loaded.items()}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


# The databases Kyma runs on, each with the async driver it uses for it; a URL may name the
# driver already.
_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}
_DATABASE_SCHEMES = frozenset(_DRIVERS) | frozenset(_DRIVERS.values())


class Settings(BaseSettings):
    """Settings of one Kyma installation; every process reads the ones it needs."""

    model_config = SettingsConfigDict(env_prefix="KYMA_", extra="ignore", frozen=True)

    data_dir: pathlib.Path = Field(
        default=pathlib.Path(".kyma"),
        description="Where the embedded SQLite database and the generated admin and bridge "
        "tokens live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; postgresql://… for production. Default: SQLite in data_dir.",
    )
    database_pool_size: int = Field(
        default=10, ge=1, description="Connections each core keeps open to the database."
    )
    database_max_overflow: int = Field(
        default=10, ge=0, description="Connections a core may open beyond the pool at peaks."
    )
    database_pgbouncer: bool = Field(
        default=False,
        description="The database is reached through PgBouncer in transaction mode: no "
        "prepared statement outlives its transaction.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis for shared rate limits; unset = in-process limiter."
    )
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    core_address: str | None = Field(
        default=None,
        description="Where the bridge and CLI reach the cores: one host:port (a name that "
        "resolves to several cores reaches them all), a comma-separated list of IP:port, or a "
        "gRPC target (dns:///name:port). Default grpc_host:grpc_port.",
    )
    bridge_relay_streams: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="Long-lived gRPC streams each bridge carries its inference calls on "
        "(InferenceRelay: many calls per stream, far less CPU than a gRPC call each); each "
        "opens on a core the balancing picks and is replaced every "
        "bridge_relay_stream_seconds. Default: one per core the bridge is given (one per "
        "address of a core_address list, one for an IP address or this machine's core, 2 for "
        "a name, which may resolve to several cores). 0: one gRPC call per request.",
    )
    bridge_relay_stream_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Age at which a relay stream takes no more calls and a new one opens "
        "(so that new or recovered cores get their share).",
    )
    bridge_core_wait_seconds: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="How long a starting bridge waits for a core to answer before it serves "
        "anyway (its inference calls then get 503 until one does). Meanwhile it does not say "
        "it listens, and connections wait in its socket's queue instead of getting a 503. "
        "0: it does not wait.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Token for the admin gRPC API. Unset: generated once into data_dir/admin_token.",
    )
    bridge_token: SecretStr | None = Field(
        default=None,
        description="Credential the bridge presents so that the core believes the client "
        "address and fingerprint it forwards. Unset: generated once into data_dir/bridge_token "
        "(shared by the core and bridge of `kyma serve`; a bridge elsewhere must be given it).",
    )
    catalog: pathlib.Path | None = Field(
        default=None, description="Model catalogue (YAML). Unset: the built-in demo model only."
    )
    mail_url: str | None = Field(
        default=None, description="smtp://host:port or file:///dir; unset = mails go to the log."
    )
    mail_sender: str = Field(
        default="Kyma <no-reply@kyma.local>", description="From address of Kyma's mail."
    )
    signup_code_ttl_seconds: int = Field(
        default=900, gt=0, description="How long a sign-up code is valid."
    )
    signup_max_attempts: int = Field(
        default=5, gt=0, description="Wrong guesses that kill a sign-up code."
    )
    signups_per_ip_per_minute: int = Field(
        default=5, gt=0, description="Sign-up code requests per client address."
    )
    signups_per_email_per_minute: int = Field(
        default=3, gt=0, description="Sign-up code requests per person."
    )
    verifications_per_ip_per_minute: int = Field(
        default=20, gt=0, description="Code checks per client address."
    )
    session_lifetime_seconds: float = Field(
        default=7 * 86400,
        gt=0,
        description="How long a web session (console sign-in) lasts at most, whatever its use.",
    )
    session_idle_seconds: float = Field(
        default=86400,
        gt=0,
        description="A web session unused for this long ends.",
    )
    terms_dir: pathlib.Path | None = Field(
        default=None,
        description="Directory of the terms of service, one YYYY-MM-DD.txt per version (the "
        "newest is current). Unset: the terms Kyma ships.",
    )
    cors_allowed_origins: str = Field(
        default="",
        description="Origins whose pages may call the API from a browser with an API key "
        "(comma-separated; '*' = any). Never with the session cookie. Empty: none.",
    )
    welcome_bonus_usd: Decimal = Decimal("0.50")
    referrals_enabled: bool = Field(
        default=True, description="Switch the referral program on or off."
    )
    referral_tokens_required: int = Field(
        default=1_000_000, gt=0, description="Tokens a referred account uses to verify."
    )
    referral_reward_usd: Decimal = Field(
        default=Decimal("0.50"), ge=0, description="Paid to both accounts."
    )
    referral_check_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often referrals are checked."
    )
    public_base_url: str = Field(
        default="http://127.0.0.1:8000", description="Base of links Kyma gives out."
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, description="Largest request body the bridge accepts."
    )
    http_max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="Largest request line plus headers the bridge reads (larger: 431).",
    )
    http_max_headers: int = Field(
        default=100, ge=10, description="Most header fields in one request (more: 431)."
    )
    http_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Time a request's line and headers have to arrive, from its first byte "
        "or the connection's opening (later: 408 and the connection closed).",
    )
    http_body_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Time a request's body has to arrive after its headers (later: the "
        "connection is closed).",
    )
    demo_tokens_per_second: float = Field(
        default=50.0, description="Pace of the built-in demo model's streams; 0 = no pacing."
    )
    key_cache_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a node trusts a key lookup. Revocations, suspensions and tier "
        "changes reach every node through the account-event feed regardless.",
    )
    account_events_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How often a node reads the account-event feed (revocations and the like).",
    )
    shutdown_grace_seconds: float = Field(
        default=30.0, description="How long shutdown waits for in-flight requests and streams."
    )
    node_lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A core whose heartbeat is older than this is taken for dead; its open "
        "holds are settled by the others at their last checkpoint.",
    )
    node_heartbeat_seconds: float = Field(
        default=3.0, gt=0, description="How often a core renews its lease."
    )
    hold_retention_days: int = Field(
        default=30, ge=1, description="How long ended holds are kept (the ledger is kept)."
    )
    hold_ttl_seconds: float = Field(
        default=900.0,
        description="When an unsettled hold (its request vanished) expires; at least the "
        "longest deployment total timeout plus a minute.",
    )
    stripe_secret_key: SecretStr | None = Field(
        default=None, description="Stripe API key; unset = purchases are switched off."
    )
    stripe_webhook_secret: SecretStr | None = Field(
        default=None, description="Signing secret of the Stripe webhook endpoint (whsec_…)."
    )
    stripe_api_base: str = Field(
        default="https://api.stripe.com",
        description="Stripe API base URL (tests point it at a fake).",
    )
    checkout_success_url: str | None = Field(
        default=None,
        description="Where Stripe sends the buyer after paying. Unset: the console's billing "
        "page (public_base_url + /console/billing?checkout=success).",
    )
    checkout_cancel_url: str | None = Field(
        default=None,
        description="Where Stripe sends a buyer who cancels. Unset: the console's billing page.",
    )
    checkout_min_usd: Decimal = Decimal("5")
    checkout_max_usd: Decimal = Decimal("10000")
    tiers: tuple[Tier, ...] = Field(
        default=DEFAULT_TIERS,
        description="The tier table (JSON list in the environment, a list in the config file).",
    )
    expected_nodes: int = Field(
        default=1,
        ge=1,
        description="Core nodes sharing Redis; without Redis each node admits limit ÷ this.",
    )
    redis_key_prefix: str = Field(
        default="kyma:rl:", description="Prefix of Kyma's rate-limit keys in Redis."
    )
    redis_timeout_ms: float = Field(
        default=50.0,
        gt=0,
        description="How long a limiter call waits for Redis (its own time, not this node's "
        "event-loop lag) before falling back.",
    )
    redis_cluster: bool = Field(
        default=False,
        description="KYMA_REDIS_URL names a node of a Redis Cluster (the others are discovered).",
    )
    redis_warm_connections: int = Field(
        default=32,
        ge=1,
        description="Connections to Redis each core opens at start-up and keeps (its pool's "
        "size): a burst waits for one rather than opening new ones mid-burst.",
    )
    max_attempts_per_request: int = Field(
        default=3, ge=1, description="Deployments one request may try."
    )
    retry_budget_ratio: float = Field(
        default=0.2, ge=0, description="Retries allowed per request, node-wide."
    )
    breaker_failures_to_open: int = Field(
        default=3,
        ge=1,
        description="Failures within the window that eject a deployment (see the next two).",
    )
    breaker_window_seconds: float = Field(
        default=10.0, gt=0, description="The window in which a deployment's failures count."
    )
    breaker_min_accounts: int = Field(
        default=3,
        ge=1,
        description="Distinct accounts whose requests must have failed for an ejection.",
    )
    breaker_failure_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of the window's requests that must have failed for an ejection.",
    )
    routing_panic_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Below this share of a model's deployments left, breakers are ignored.",
    )
    breaker_cooldown_seconds: float = Field(
        default=5.0, gt=0, description="First ejection; doubles on repeat."
    )
    breaker_max_cooldown_seconds: float = Field(default=300.0, gt=0)
    probe_interval_seconds: float = Field(
        default=2.0, gt=0, description="How often ejected deployments are probed."
    )
    log_retention_days: int = Field(default=90, ge=1, description="How long request logs are kept.")
    log_buffer_capacity: int = Field(
        default=10_000, ge=100, description="Request-log entries held in memory at most."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Where the core serves Prometheus metrics."
    )
    metrics_port: int | None = Field(
        default=9464, description="Core metrics port; unset = no metrics server."
    )
    bridge_metrics_host: str = Field(
        default="127.0.0.1", description="Where the bridge serves Prometheus metrics."
    )
    bridge_metrics_port: int | None = Field(
        default=9465, description="Bridge metrics port; unset = no metrics server."
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Proxies whose X-Forwarded-For gives the client's address "
        "(comma-separated, '*' = any).",
    )
    log_level: str = Field(default="INFO", description="Log level of every process.")
    workers: int | None = Field(
        default=None,
        ge=1,
        description="Worker processes of `kyma serve`: that many cores and that many bridges on "
        "this machine. Unset: the machine's cores for `kyma serve`, one for `kyma serve core` "
        "and `kyma serve bridge`.",
    )

    @field_validator("welcome_bonus_usd")
    @classmethod
    def _non_negative(cls, value: Decimal) -> Decimal:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_source = _YamlFileSource(settings_cls, os.environ.get("KYMA_CONFIG"))
        # Secrets as files, one per setting named like its variable in lower case
        # (/run/secrets/kyma_admin_token): what Docker and Compose secrets, and Kubernetes
        # Secrets mounted as a volume, give a process. Read when the directory exists.
        secrets_dir = pathlib.Path(os.environ.get("KYMA_SECRETS_DIR", "/run/secrets"))
        if not secrets_dir.is_dir():
            return (init_settings, env_settings, yaml_source)
        secrets = SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir)
        return (init_settings, env_settings, secrets, yaml_source)

    @property
    def sqlite_path(self) -> pathlib.Path:
        """The embedded database's file, used when no database_url is given."""
        return self.data_dir / "kyma.db"

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the async driver Kyma uses for it."""
        url = self.database_url or f"sqlite:///{self.sqlite_path.resolve()}"
        scheme, _, rest = url.partition("://")
        return f"{_DRIVERS.get(scheme, scheme)}://{rest}"

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value is not None and value.split("://", 1)[0] not in _DATABASE_SCHEMES:
            raise ValueError("must start with postgresql:// (or postgres://) or sqlite://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and value.split("://", 1)[0] not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("core_address")
    @classmethod
    def _core_target(cls, value: str | None) -> str | None:
        if value is not None:
            grpc_target(value)  # a clear error at start-up, not at the first call
        return value

    @property
    def checkout_urls(self) -> tuple[str, str]:
        """(success, cancel) URLs of a Checkout Session."""
        base = self.public_base_url.rstrip("/")
        return (
            self.checkout_success_url
            or f"{base}/console/billing?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
            self.checkout_cancel_url or f"{base}/console/billing?checkout=cancelled",
        )

    @property
    def cors_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_allowed_origins.split(",") if o.strip()]

    @property
    def core_target(self) -> str:
        """The cores as a gRPC target (see `grpc_target`); by default this machine's core
        (a core listening on every address, 0.0.0.0 or ::, is reached on loopback)."""
        if self.core_address:
            return grpc_target(self.core_address)
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(
            self.grpc_host, self.grpc_host
        )
        return f"{host}:{self.grpc_port}"

    @property
    def relay_streams(self) -> int:
        """How many relay streams a bridge keeps (`bridge_relay_streams`, by default one per
        core it is given). More streams than cores only split the answers that would have
        shared a message: at c=32 one stream on one core cost about 6% less CPU per request
        than two (docs/performance.md, "One relay stream per core")."""
        if self.bridge_relay_streams is not None:
            return self.bridge_relay_streams
        return cores_named(self.core_address)

    def chosen(self, name: str) -> bool:
        """Whether setting `name` was given (environment, config file or constructor) rather
        than left at its default."""
        return name in self.model_fields_set

    @property
    def admin_token_file(self) -> pathlib.Path:
        return self.data_dir / "admin_token"

    @property
    def bridge_token_file(self) -> pathlib.Path:
        return self.data_dir / "bridge_token"

    def bridge_credential(self) -> str:
        """KYMA_BRIDGE_TOKEN, or else the token in data_dir/bridge_token. The core and the bridge
        of `kyma serve` start together and share the data directory: whichever comes first
        creates the file (readable by its owner only, linked into place whole, so the other
        reads either nothing or the whole token and both end up with the same one). Called once
        at start-up by each; an empty token is refused (ValueError), as it would match nothing
        a bridge can send."""
        if self.bridge_token is not None:
            token = self.bridge_token.get_secret_value().strip()
        else:
            token = shared_token(self.bridge_token_file, prefix="kybrg_")
        if not token:
            raise ValueError(
                "the bridge token (KYMA_BRIDGE_TOKEN or data_dir/bridge_token) is empty"
            )
        return token


def shared_token(path: pathlib.Path, *, prefix: str) -> str:
    """The token in `path`, created if absent. The new token is written to a private draft and
    hard-linked to `path`, which fails if another process linked its own first: then theirs is
    the token."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"{prefix}{secrets.token_urlsafe(32)}"
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(token + "\n")
    try:
        os.link(draft, path)
    except FileExistsError:
        token = path.read_text().strip()
    finally:
        draft.unlink()
    return token


def read_settings() -> Settings:
    """The settings, read once at start-up. Invalid ones end the process with a message that
    names each one and says what is wrong with it — no traceback, and never the value given
    (it may be a secret)."""
    try:
        return Settings()
    except ValidationError as error:
        lines = []
        for problem in error.errors(include_input=False, include_url=False):
            field = ".".join(str(part) for part in problem["loc"])
            where = f"{field} (KYMA_{field.upper()}): " if field else ""
            lines.append(f"  {where}{problem['msg']}")
        raise SystemExit("kyma: the settings are not valid:\n" + "\n".join(lines)) from None


def cores_named(address: str | None) -> int:
    """How many cores KYMA_CORE_ADDRESS names: one per address of a list (or of an `ipv4:`/
    `ipv6:` target), one for an IP address, a unix socket or this machine's core (None), and 2
    for a host name or a `dns:` target, which may resolve to several (2: the relay's default
    before it counted cores)."""
    if not address:
        return 1
    target = grpc_target(address)
    scheme, _, rest = target.partition(":")
    if scheme in ("ipv4", "ipv6"):
        return len(rest.split(","))
    if scheme in ("unix", "unix-abstract"):
        return 1
    if "://" in target:  # dns:///name:port
        return 2
    try:
        ipaddress.ip_address(target.rpartition(":")[0].strip("[]"))
    except ValueError:
        return 2  # a host name
    return 1


def grpc_target(address: str) -> str:
    """KYMA_CORE_ADDRESS as a gRPC target. One `host:port` stays as it is: gRPC resolves the
    name and, with round robin, uses every address it resolves to (a Kubernetes headless
    Service, a Compose network alias shared by several cores). A target with a scheme
    (`dns:///…`, `ipv4:…`, `unix:…`) is passed through. A comma-separated list must name IP
    addresses (gRPC has no resolver for a list of names) and becomes an `ipv4:`/`ipv6:` target,
    whose addresses are all used. Anything else is a ValueError that says what to write."""
    address = address.strip()
    parts = [part.strip() for part in address.split(",")]
    if len(parts) == 1:
        if not address or address.startswith(":"):
            raise ValueError(f"{address!r} names no host: write host:port")
        return address
    families = set()
    for part in parts:
        host, _, port = part.rpartition(":")
        if not port.isdigit() or not host:
            raise ValueError(f"{part!r} in the list is not IP:port")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            raise ValueError(
                f"{part!r}: a list of cores must name them by IP address (10.0.0.5:50051,"
                "10.0.0.6:50051); to reach cores by name, give one name that resolves to all "
                "of them (a Kubernetes headless Service, a Compose network alias)"
            ) from None
    if len(families) > 1:
        raise ValueError("a list of cores must be all IPv4 or all IPv6 addresses")
    scheme = "ipv4" if families == {4} else "ipv6"
    return f"{scheme}:{','.join(parts)}"
