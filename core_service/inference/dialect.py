"""What the pipeline needs from an API dialect (OpenAI chat completions, OpenAI Responses,
Anthropic Messages), so that one policy path serves them all.

A `Dialect` reads a client's request into what policy needs (`InferenceRequest`), and for
each deployment a request is tried on makes an `Exchange`: the upstream call (path, body,
headers) and how its answer comes back in the client's dialect — passed through where the
deployment speaks the dialect natively, translated to and from chat completions where it
does not. An `Answer` is a whole reply read; a `Relay` turns a stream's upstream events into
the client's, counting what was delivered so that usage is known however the stream ends.

Implementations live in `core_service.dialects`; the composition root hands them to the
pipeline, which knows only these protocols.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from core_service.billing.metering import Charge
from core_service.catalog import Deployment, Model
from core_service.errors import KymaError
from core_service.values import Endpoint, InferenceRequest, Principal, TokenUsage, UpstreamDialect

# One event for the client: its SSE event name ("" for OpenAI chat chunks, which have none)
# and its JSON data.
Event = tuple[str, bytes]


class Answer(Protocol):
    """An upstream's whole reply, read."""

    @property
    def usage(self) -> TokenUsage | None:
        """What the upstream reported, in one form; None when it reported none believable."""
        ...

    def output_text(self) -> str:
        """The text written, which Kyma counts when the upstream reported no usage."""
        ...

    def render(self, charge: Charge) -> bytes:
        """The client's body, once the charge is known."""
        ...


class Relay(Protocol):
    """One stream's state, from the first upstream event to the last client event."""

    @property
    def cut(self) -> bool:
        """Set once the upstream wrote past what was held: the client gets nothing more."""
        ...

    def rewrite_all(self, batch: list[bytes]) -> list[Event]:
        """The client's events for a batch of upstream event data. Raises UpstreamError when
        the upstream reports a failure or sends something unreadable."""
        ...

    def usage(self, *, complete: bool) -> TokenUsage:
        """What to charge: the upstream's report for a complete stream, else Kyma's count of
        what was delivered."""
        ...

    def closing(self, charge: Charge, *, cut: bool) -> list[Event]:
        """The client's last events: a stream cut at its held limit ends as the dialect ends
        one at its limit, and the final usage carries the charge."""
        ...

    def failed(self, charge: Charge, error: KymaError) -> list[Event]:
        """The events that end a stream the upstream broke (empty where the dialect has none:
        the error then reaches the client as the transport's own)."""
        ...

    def logged(self) -> str:
        """What the request log keeps of the response."""
        ...


class Exchange(Protocol):
    """One request on one deployment."""

    @property
    def path(self) -> str:
        """Under the deployment's base URL."""
        ...

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def answer(self, raw: bytes) -> Answer:
        """Read a whole reply (raises UpstreamError when it is malformed)."""
        ...

    def relay(self) -> Relay: ...


class Dialect(Protocol):
    @property
    def endpoint(self) -> Endpoint: ...

    @property
    def upstream(self) -> UpstreamDialect:
        """The upstream dialect that serves this endpoint natively (otherwise: chat, translated)."""
        ...

    async def read(
        self,
        raw: bytes,
        *,
        stream: bool | None,
        principal: Principal,
        options: Mapping[str, str],
    ) -> InferenceRequest:
        """Parse and check a request body (`stream` forced on or off by the caller, or None
        for what the body says); `options` are what the client sent beside the body (such as
        Anthropic's beta flags). Raises InvalidRequest naming the field."""
        ...

    def exchange(self, request: InferenceRequest, deployment: Deployment, model: Model) -> Exchange:
        """The call on `deployment` (which `serves` this dialect)."""
        ...


class TokenCounting(Dialect, Protocol):
    """A dialect that counts a prompt's tokens (Anthropic's count_tokens): natively where a
    deployment speaks it, otherwise by Kyma's own count."""

    def count_locally(self, request: InferenceRequest) -> bytes: ...
