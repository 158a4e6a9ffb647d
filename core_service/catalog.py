"""The model catalogue: public model names, their prices, and the upstream deployments that
serve them. Loaded from the YAML file named by KYMA_CATALOG (format in the README); without
one, the catalogue holds the built-in demo model only.

Upstream API keys are named by environment variable in the file and resolved when the file is
loaded, so the file itself holds no secrets.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from core_service.errors import ModelNotFound
from core_service.values import ALL_ENDPOINTS, Endpoint

log = logging.getLogger(__name__)

DEMO_BASE_URL = "demo://local/v1"


class CatalogError(ValueError):
    """The catalogue file is missing or invalid; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """USD per million tokens. Exact decimals; zero for free models. Cache prices unset mean
    the input price (a cached token is never free unless the catalogue says 0)."""

    input_per_million: Decimal = Decimal(0)
    output_per_million: Decimal = Decimal(0)
    cached_input_per_million: Decimal | None = None
    cache_write_per_million: Decimal | None = None

    @field_validator(
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "cache_write_per_million",
    )
    @classmethod
    def _valid(cls, value: Decimal | None) -> Decimal | None:
        if value is None:
            return None
        if not value.is_finite() or value < 0:
            raise ValueError("must be a non-negative number")
        if (value * 10**9) != (value * 10**9).to_integral_value():
            raise ValueError("finer than one nano-dollar per million tokens")
        return value

    @property
    def input_nanos_per_million(self) -> int:
        return int(self.input_per_million * 10**9)

    @property
    def output_nanos_per_million(self) -> int:
        return int(self.output_per_million * 10**9)

    @property
    def cached_input_nanos_per_million(self) -> int:
        chosen = self.cached_input_per_million
        return self.input_nanos_per_million if chosen is None else int(chosen * 10**9)

    @property
    def cache_write_nanos_per_million(self) -> int:
        chosen = self.cache_write_per_million
        return self.input_nanos_per_million if chosen is None else int(chosen * 10**9)

    @property
    def highest_input_nanos_per_million(self) -> int:
        """What a prompt token may cost at most (a cache write may cost more than input)."""
        return max(
            self.input_nanos_per_million,
            self.cached_input_nanos_per_million,
            self.cache_write_nanos_per_million,
        )

    def with_cache_prices(self, cached: Decimal | None, write: Decimal | None) -> Price:
        """This price with a deployment's own cache prices, where it sets them."""
        updates = {
            name: value
            for name, value in (
                ("cached_input_per_million", cached),
                ("cache_write_per_million", write),
            )
            if value is not None
        }
        return self.model_copy(update=updates) if updates else self


class DeploymentLimits(_Strict):
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, gt=0)


class Timeouts(_Strict):
    """Seconds. `first_token` bounds the wait for response headers (or the first stream
    event); `idle` the gap between stream events; `total` the whole request."""

    connect: float = Field(default=5.0, gt=0)
    first_token: float = Field(default=60.0, gt=0)
    idle: float = Field(default=60.0, gt=0)
    total: float = Field(default=600.0, gt=0)


class Deployment(_Strict):
    name: str = ""
    base_url: str
    model: str
    api_key_env: str | None = None
    # A file holding the key (read at load and at every reload, so rotation needs no restart).
    api_key_file: pathlib.Path | None = None
    api_key: SecretStr | None = Field(default=None, exclude=True)
    weight: float = Field(default=1.0, gt=0)
    # The parameter this upstream reads the output limit from. Kyma always sends one (the
    # client's, or the model's cap): what an upstream may write is what was held for.
    output_limit_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # This provider's prompt-cache prices (USD per million), where they differ from the
    # model's: cached tokens exist only at the provider that cached them.
    cached_input_per_million: Decimal | None = Field(default=None, ge=0)
    cache_write_per_million: Decimal | None = Field(default=None, ge=0)
    limits: DeploymentLimits = DeploymentLimits()
    timeouts: Timeouts = Timeouts()

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "demo://")):
            raise ValueError("must start with http://, https:// or demo://")
        return value.rstrip("/")


class Capabilities(_Strict):
    """What the model can do, as the catalogue declares it; None: not declared (unknown, and
    shown to clients as absent, never guessed)."""

    tools: bool | None = None
    structured_outputs: bool | None = None
    vision: bool | None = None
    reasoning: bool | None = None

    def declared(self) -> dict[str, bool]:
        return {name: value for name, value in self.model_dump().items() if value is not None}


class Model(_Strict):
    name: str = Field(min_length=1, max_length=200)
    owned_by: str = "kyma"
    created: int = 1_767_225_600  # 2026-01-01, for models that do not say
    context_window: int = Field(default=8192, gt=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    # What the upstream's chat template adds to every prompt beyond its messages (a system
    # preamble, role markers): held for, so the prompt's real count is covered.
    prompt_overhead_tokens: int = Field(default=64, ge=0)
    price: Price = Price()
    endpoints: tuple[Endpoint, ...] = ALL_ENDPOINTS
    capabilities: Capabilities = Capabilities()
    # How deployments are ordered for a request (see routing/router.py).
    strategy: Literal["weighted", "least_outstanding", "lowest_latency"] = "weighted"
    deployments: tuple[Deployment, ...] = Field(min_length=1)

    def declares(self, field: str) -> bool:
        """Whether the catalogue set `field` (rather than Kyma's default standing in)."""
        return field in self.model_fields_set


class _CatalogFile(_Strict):
    models: tuple[Model, ...]


DEMO_MODEL = Model(
    name="kyma-demo",
    owned_by="kyma",
    context_window=32768,
    max_output_tokens=1024,
    price=Price(input_per_million=Decimal("0.10"), output_per_million=Decimal("0.20")),
    deployments=(Deployment(name="demo", base_url=DEMO_BASE_URL, model="kyma-demo"),),
)


class Catalog:
    def __init__(self, models: tuple[Model, ...]) -> None:
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise CatalogError(f"model names appear twice: {', '.join(duplicates)}")
        self._models = {m.name: m for m in models}

    @classmethod
    def builtin(cls) -> Catalog:
        return cls((DEMO_MODEL,))

    @classmethod
    def load(cls, path: pathlib.Path, environ: Mapping[str, str]) -> Catalog:
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CatalogError(f"cannot read the catalogue {path}: {exc}") from None
        try:
            parsed = _CatalogFile.model_validate(raw)
        except ValidationError as exc:
            raise CatalogError(f"invalid catalogue {path}:\n{exc}") from None
        return cls(tuple(_resolve_keys(m, environ) for m in parsed.models))

    def get(self, name: str) -> Model:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(name)
        return model

    def models(self) -> list[Model]:
        return list(self._models.values())


def _resolve_keys(model: Model, environ: Mapping[str, str]) -> Model:
    deployments = []
    for index, deployment in enumerate(model.deployments):
        name = deployment.name or f"{model.name}#{index}"
        key = None
        if deployment.api_key_env and deployment.api_key_file:
            raise CatalogError(
                f"model {model.name}, deployment {name}: give api_key_env or api_key_file, not both"
            )
        if deployment.api_key_env:
            value = environ.get(deployment.api_key_env)
            if not value:
                raise CatalogError(
                    f"model {model.name}, deployment {name}: the environment variable "
                    f"{deployment.api_key_env} is not set"
                )
            key = SecretStr(value)
        elif deployment.api_key_file:
            try:
                value = deployment.api_key_file.read_text().strip()
            except OSError as exc:
                raise CatalogError(
                    f"model {model.name}, deployment {name}: cannot read the key file "
                    f"{deployment.api_key_file}: {exc.strerror}"
                ) from None
            if not value:
                raise CatalogError(
                    f"model {model.name}, deployment {name}: the key file "
                    f"{deployment.api_key_file} is empty"
                )
            key = SecretStr(value)
        deployments.append(deployment.model_copy(update={"name": name, "api_key": key}))
    return model.model_copy(update={"deployments": tuple(deployments)})


class CatalogHolder:
    """The running catalogue, replaced whole by a reload; a bad file leaves it as it was.

    Upstream keys named by `api_key_env` come from the environment captured at start-up (a
    running process's environment does not change); keys named by `api_key_file` are read
    from their files again on every reload, which is how a rotated key is taken up without a
    restart (a Kubernetes Secret mounted as a file, say)."""

    def __init__(
        self, catalog: Catalog, *, path: pathlib.Path | None, environ: Mapping[str, str]
    ) -> None:
        self._catalog = catalog
        self._path = path
        self._environ = environ

    def get(self, name: str) -> Model:
        return self._catalog.get(name)

    def has(self, name: str) -> bool:
        return any(model.name == name for model in self._catalog.models())

    def models(self) -> list[Model]:
        return self._catalog.models()

    def reload(self) -> Catalog:
        """Read the catalogue file again. Raises CatalogError (and keeps the running one) when
        the file is missing or invalid."""
        try:
            if self._path is None:
                raise CatalogError("Kyma runs on the built-in catalogue (KYMA_CATALOG is not set)")
            catalog = Catalog.load(self._path, self._environ)
        except CatalogError as exc:
            log.error("catalogue not reloaded, the running one stays: %s", exc)
            raise
        self._catalog = catalog
        log.info("catalogue reloaded: %d models", len(catalog.models()))
        return catalog
