"""A real OpenAI-compatible HTTP server with fault injection, for tests and benchmarks.

It is a raw ASGI app on uvicorn (uvloop, httptools) with no framework in between, because it is
the baseline benchmarks subtract: its own per-request cost must be close to nothing. Faults
(latency, errors, 429s, hangs, broken streams) are set by flags or at run time through
`POST /_control`, and `GET /_stats` shows what arrived, so tests can assert what a gateway
forwarded. Fault shares are drawn from a seeded `random.Random`, so a run can be replayed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import logging
import random
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

from core_service.simulators.fake_model.checks import error_body
from core_service.simulators.fake_model.http import (
    SSE_DONE,
    JsonReply,
    StreamReply,
    answer,
    encode_sse,
    is_token_chunk,
)
from core_service.simulators.fake_model.model import FakeModel

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API_ROOT = "/v1"
DEFAULT_PORT = 8100
# A hung or slowly paced request must not keep a stopping server alive for long.
GRACEFUL_SHUTDOWN_SECONDS = 3

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_MODEL_PATH_PREFIX = f"{API_ROOT}/models/"
_KNOWN_PATHS = frozenset(
    f"{API_ROOT}{endpoint}"
    for endpoint in ("/chat/completions", "/completions", "/embeddings", "/models")
)


def _number(name: str, value: Any, *, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    if value < low or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return value


@dataclass(frozen=True)
class UpstreamConfig:
    """Fault settings. Shares are fractions of API requests; they are drawn from one random number
    per request, so together they may not exceed 1."""

    latency_ms: float = 0.0
    tokens_per_second: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    rate_limit_rate: float = 0.0
    hang_rate: float = 0.0
    drop_stream_after: int | None = None
    require_api_key: str | None = None
    # Bodies containing this text get a 500 (as many real upstreams answer input they choke
    # on): the fault one tenant's requests can cause, whatever the others send.
    fail_on_text: str | None = None
    # Misbehaviours of real servers: writing this many tokens past the limit it was sent, and
    # sending no usage at all (no `usage` in replies, no usage chunk in streams).
    overrun_tokens: int = 0
    omit_usage: bool = False
    # Usage as prompt-caching and reasoning models report it: this share of each prompt as
    # cached (`prompt_tokens_details.cached_tokens`), this share of each completion as reasoning
    # (`completion_tokens_details.reasoning_tokens`). A request's `simulate_usage` object
    # overrides them for itself.
    cached_prompt_fraction: float = 0.0
    reasoning_fraction: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        # JSON integers are accepted for the float settings; storing them as floats keeps
        # GET /_control stable whichever way a value was written.
        for name in ("latency_ms", "tokens_per_second"):
            object.__setattr__(self, name, _number(name, getattr(self, name), low=0))
        for name in (
            "error_rate",
            "rate_limit_rate",
            "hang_rate",
            "cached_prompt_fraction",
            "reasoning_fraction",
        ):
            object.__setattr__(self, name, _number(name, getattr(self, name), low=0, high=1))
        if self.error_rate + self.rate_limit_rate + self.hang_rate > 1 + 1e-9:
            raise ValueError("error_rate + rate_limit_rate + hang_rate must not exceed 1")
        _integer("error_status", self.error_status, low=400, high=599)
        if self.drop_stream_after is not None:
            _integer("drop_stream_after", self.drop_stream_after, low=0)
        if self.require_api_key is not None and (
            not isinstance(self.require_api_key, str) or not self.require_api_key
        ):
            raise ValueError("require_api_key must be a non-empty string or null")
        if self.fail_on_text is not None and (
            not isinstance(self.fail_on_text, str) or not self.fail_on_text
        ):
            raise ValueError("fail_on_text must be a non-empty string or null")
        _integer("overrun_tokens", self.overrun_tokens, low=0, high=100_000)
        if not isinstance(self.omit_usage, bool):
            raise ValueError("omit_usage must be a boolean")
        if self.seed is not None:
            _integer("seed", self.seed, low=-(2**63), high=2**63 - 1)

    def updated(self, changes: Mapping[str, Any]) -> UpstreamConfig:
        """A copy with `changes` applied; ValueError names any unknown or invalid field."""
        known = {item.name for item in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class UpstreamStats:
    """What the server has seen since start or the last reset. Raw headers and body of the last
    API request are kept as received and decoded only when asked for."""

    requests_total: int = 0
    requests_by_path: dict[str, int] = field(default_factory=dict)
    responses_by_status: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    cancelled: int = 0
    injected_errors: int = 0
    injected_rate_limits: int = 0
    injected_hangs: int = 0
    dropped_streams: int = 0
    last_request_method: str | None = None
    last_request_path: str | None = None
    last_request_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    last_request_body: bytes | None = None

    def reset(self) -> None:
        # In-flight requests are still running; forgetting them would make the gauge go negative.
        in_flight = self.in_flight
        fresh = UpstreamStats(in_flight=in_flight)
        for item in dataclasses.fields(self):
            setattr(self, item.name, getattr(fresh, item.name))

    def as_json(self) -> dict[str, Any]:
        body: Any = None
        if self.last_request_body is not None:
            try:
                body = orjson.loads(self.last_request_body)
            except orjson.JSONDecodeError:
                body = self.last_request_body.decode("utf-8", "replace")
        headers: dict[str, str] = {}
        for name, value in self.last_request_headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return {
            "requests_total": self.requests_total,
            "requests_by_path": dict(self.requests_by_path),
            "responses_by_status": dict(self.responses_by_status),
            "in_flight": self.in_flight,
            "cancelled": self.cancelled,
            "injected_errors": self.injected_errors,
            "injected_rate_limits": self.injected_rate_limits,
            "injected_hangs": self.injected_hangs,
            "dropped_streams": self.dropped_streams,
            "last_request": {
                "method": self.last_request_method,
                "path": self.last_request_path,
                "headers": headers,
                "body": body,
            },
        }


class StreamDropped(Exception):
    """Raised inside the app to make uvicorn close the connection mid-stream, without the final
    chunk of the chunked encoding: the client sees a truly broken stream, not a short one."""


class _QuietDroppedStreams(logging.Filter):
    """Keeps uvicorn from logging a traceback for every stream cut on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamDropped))


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when the client left before sending all of it."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_json(
    send: Send, status: int, body: Any, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    payload = orjson.dumps(body)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class UpstreamApp:
    """The ASGI application. All state (config, counters, random source) lives on the instance."""

    def __init__(self, config: UpstreamConfig, *, model: FakeModel | None = None) -> None:
        self.config = config
        self.stats = UpstreamStats()
        self._model = model if model is not None else FakeModel(listed_models=("test-model",))
        self.model = self._configured(self._model)
        self._random = random.Random(config.seed)

    def _configured(self, model: FakeModel) -> FakeModel:
        return dataclasses.replace(
            model,
            cached_prompt_fraction=self.config.cached_prompt_fraction,
            reasoning_fraction=self.config.reasoning_fraction,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/_"):
            await self._control_plane(scope, receive, send)
        else:
            await self._api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- control plane ------------------------------------------------------------------------

    async def _control_plane(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            return
        route = (scope["method"], scope["path"])
        if route == ("GET", "/_control"):
            await _send_json(send, 200, self.config.as_json())
        elif route == ("POST", "/_control"):
            await self._update_config(send, body)
        elif route == ("GET", "/_stats"):
            await _send_json(send, 200, self.stats.as_json())
        elif route == ("POST", "/_stats/reset"):
            self.stats.reset()
            await _send_json(send, 200, self.stats.as_json())
        elif route == ("GET", "/_health"):
            await _send_json(send, 200, {"status": "ok"})
        else:
            await _send_json(send, 404, error_body(f"Invalid URL ({route[0]} {route[1]})"))

    async def _update_config(self, send: Send, body: bytes) -> None:
        try:
            changes = orjson.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of settings")
            config = self.config.updated(changes)
        except (orjson.JSONDecodeError, ValueError, TypeError) as error:
            await _send_json(send, 400, error_body(f"Invalid control settings: {error}"))
            return
        if "seed" in changes:
            self._random = random.Random(config.seed)
        self.config = config
        self.model = self._configured(self._model)
        await _send_json(send, 200, config.as_json())

    # --- the OpenAI API -----------------------------------------------------------------------

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.stats
        path: str = scope["path"]
        stats.requests_total += 1
        # Counting every distinct path would let a scan (or many model ids) grow the table.
        if path in _KNOWN_PATHS:
            counted_path = path
        elif path.startswith(_MODEL_PATH_PREFIX):
            counted_path = f"{_MODEL_PATH_PREFIX}{{model}}"
        else:
            counted_path = "other"
        stats.requests_by_path[counted_path] = stats.requests_by_path.get(counted_path, 0) + 1
        stats.in_flight += 1
        status = 499  # nginx's "client closed request", for requests that never get an answer
        try:
            body = await _read_body(receive)
            if body is None:
                stats.cancelled += 1
                return
            stats.last_request_method = scope["method"]
            stats.last_request_path = path
            stats.last_request_headers = scope["headers"]
            stats.last_request_body = body
            status = await self._respond(scope, receive, send, body)
        except StreamDropped:
            status = 200
            raise
        finally:
            stats.in_flight -= 1
            key = str(status)
            stats.responses_by_status[key] = stats.responses_by_status.get(key, 0) + 1

    async def _respond(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> int:
        """Answers one API request and returns the status sent (499 when the client left first)."""
        config = self.config
        stats = self.stats
        if config.require_api_key is not None and not _authorized(scope, config.require_api_key):
            await _send_json(
                send,
                401,
                error_body("Incorrect API key provided.", code="invalid_api_key"),
            )
            return 401

        if config.fail_on_text is not None and config.fail_on_text.encode() in body:
            stats.injected_errors += 1
            await _send_json(
                send,
                500,
                error_body(
                    "Input should be 'text' or 'json_object' (the test upstream chokes on it).",
                    type="server_error",
                ),
            )
            return 500

        draw = self._random.random()
        if draw < config.hang_rate:
            stats.injected_hangs += 1
            await _until_disconnect(receive)
            stats.cancelled += 1
            return 499

        if config.latency_ms > 0:
            if await _client_left(asyncio.sleep(config.latency_ms / 1000), receive):
                stats.cancelled += 1
                return 499

        if draw < config.hang_rate + config.rate_limit_rate:
            stats.injected_rate_limits += 1
            await _send_json(
                send,
                429,
                error_body(
                    "Rate limit reached for requests (injected by the test upstream).",
                    type="requests",
                    code="rate_limit_exceeded",
                ),
                ((b"retry-after", b"1"),),
            )
            return 429
        if draw < config.hang_rate + config.rate_limit_rate + config.error_rate:
            stats.injected_errors += 1
            status = config.error_status
            await _send_json(
                send,
                status,
                error_body(
                    f"Injected failure (status {status}) from the test upstream.",
                    type="server_error" if status >= 500 else "invalid_request_error",
                ),
            )
            return status

        reply = answer(
            self.model, scope["method"], scope["path"], _misbehaved(body, config), api_root=API_ROOT
        )
        if isinstance(reply, JsonReply):
            payload = reply.body
            if config.omit_usage and isinstance(payload, dict):
                payload = {k: v for k, v in payload.items() if k != "usage"}
            await _send_json(send, reply.status, payload)
            return reply.status
        if await _client_left(self._stream(send, reply, config), receive):
            stats.cancelled += 1
            return 499
        return 200

    async def _stream(self, send: Send, reply: StreamReply, config: UpstreamConfig) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        loop = asyncio.get_running_loop()
        interval = 1.0 / config.tokens_per_second if config.tokens_per_second else 0.0
        # Pacing against a schedule rather than sleeping a fixed interval keeps the rate exact
        # however long each send takes.
        next_token_at = loop.time()
        sent_tokens = 0
        for chunk in reply.chunks:
            if config.omit_usage and chunk.get("usage") is not None and not chunk.get("choices"):
                continue
            if is_token_chunk(chunk):
                if config.drop_stream_after is not None and sent_tokens >= config.drop_stream_after:
                    self.stats.dropped_streams += 1
                    raise StreamDropped
                if interval:
                    next_token_at += interval
                    delay = next_token_at - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                sent_tokens += 1
            await send({"type": "http.response.body", "body": encode_sse(chunk), "more_body": True})
        if config.drop_stream_after is not None and sent_tokens >= config.drop_stream_after:
            # The reply was no longer than the cut: it still must not end cleanly.
            self.stats.dropped_streams += 1
            raise StreamDropped
        await send({"type": "http.response.body", "body": SSE_DONE, "more_body": False})


def _misbehaved(body: bytes, config: UpstreamConfig) -> bytes:
    """The request as a misbehaving server reads it: its output limit ignored by so much."""
    if not config.overrun_tokens:
        return body
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(request, dict):
        return body
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(request.get(name), int):
            request[name] += config.overrun_tokens
    return orjson.dumps(request)


def _authorized(scope: Scope, api_key: str) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(
                token.strip(), api_key.encode()
            )
    return False


async def _client_left(work: Awaitable[None], receive: Receive) -> bool:
    """Runs `work` unless the client disconnects first (then `work` is cancelled): True if it did.
    uvicorn's `send` silently drops data for a vanished client, so only `receive` can tell."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    try:
        done, _ = await asyncio.wait((work_task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, watcher):
            if not task.done():
                task.cancel()
        await asyncio.gather(work_task, watcher, return_exceptions=True)
    if work_task in done:
        work_task.result()  # re-raises StreamDropped and real failures
        return False
    return True


def build_app(
    config: UpstreamConfig | None = None, *, model: FakeModel | None = None
) -> UpstreamApp:
    return UpstreamApp(config if config is not None else UpstreamConfig(), model=model)


# --- command line -----------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, UpstreamConfig]:
    parser = argparse.ArgumentParser(
        prog="kyma test-upstream",
        description="OpenAI-compatible test upstream with fault injection (change faults at run "
        "time with POST /_control; read counters with GET /_stats).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay before response headers"
    )
    parser.add_argument(
        "--tokens-per-second", type=float, default=0.0, help="stream pacing; 0 = unpaced"
    )
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests failing")
    parser.add_argument("--error-status", type=int, default=500, help="status of injected failures")
    parser.add_argument("--rate-limit-rate", type=float, default=0.0, help="share answered 429")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="share never answered")
    parser.add_argument(
        "--drop-stream-after", type=int, default=None, help="cut streams after this many tokens"
    )
    parser.add_argument(
        "--require-api-key", default=None, help="demand 'Authorization: Bearer KEY'"
    )
    parser.add_argument(
        "--cached-prompt-fraction",
        type=float,
        default=0.0,
        help="share of each prompt reported as cached tokens",
    )
    parser.add_argument(
        "--reasoning-fraction",
        type=float,
        default=0.0,
        help="share of each completion reported as reasoning tokens",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault draws")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    try:
        config = UpstreamConfig(
            latency_ms=args.latency_ms,
            tokens_per_second=args.tokens_per_second,
            error_rate=args.error_rate,
            error_status=args.error_status,
            rate_limit_rate=args.rate_limit_rate,
            hang_rate=args.hang_rate,
            drop_stream_after=args.drop_stream_after,
            require_api_key=args.require_api_key,
            cached_prompt_fraction=args.cached_prompt_fraction,
            reasoning_fraction=args.reasoning_fraction,
            seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    return args, config


class _AnnouncingServer(uvicorn.Server):
    """Prints the listening line only once the socket accepts connections, so a parent process
    that waits for it can connect straight away."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self._url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"test-upstream listening on {self._url}", flush=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def main(argv: list[str] | None = None) -> None:
    args, config = _parse_args(argv)
    try:
        sock = _bind(args.host, args.port)
    except OSError as error:
        print(f"test-upstream: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    server = _AnnouncingServer(
        uvicorn.Config(
            build_app(config),
            loop="uvloop",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        ),
        f"http://{host}:{port}",
    )
    logging.getLogger("uvicorn.error").addFilter(_QuietDroppedStreams())
    # uvicorn re-raises the stop signal once it has shut down; as KeyboardInterrupt (caught below)
    # SIGTERM ends the process with status 0 instead of being killed by it.
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        sock.close()


if __name__ == "__main__":
    main()
