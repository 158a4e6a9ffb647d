"""OpenAI's chat completions, legacy completions and embeddings: Kyma's first dialect, passed
through to deployments that speak it (every parameter as the client sent it, but `model`, the
output limit and a stream's usage request), and the dialect the others translate to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from core_service.billing.metering import Charge, output_tokens_to_hold
from core_service.catalog import Deployment, Model
from core_service.dialects.common import json_object
from core_service.errors import KymaError
from core_service.inference.costs import priced_response
from core_service.inference.dialect import Event
from core_service.inference.requests import UPSTREAM_PATHS, parse_request
from core_service.inference.streams import StreamRelay
from core_service.inference.usage import usage_from_upstream
from core_service.values import Endpoint, InferenceRequest, Principal, TokenUsage, UpstreamDialect


def chat_body(
    body: Mapping[str, Any], request: InferenceRequest, deployment: Deployment, model: Model
) -> bytes:
    """A chat (or completions, or embeddings) body as the deployment reads it: its model name,
    the output limit in the parameter it reads — always one: the client's, or the model's cap,
    which is what the hold covers (an upstream's own default might be more) — and, for a
    stream, usage asked for whatever the client asked."""
    sent: dict[str, Any] = dict(body)
    sent["model"] = deployment.model
    if request.endpoint != "embeddings":
        per_choice = sent.pop("max_completion_tokens", None) or sent.pop("max_tokens", None)
        sent.pop("max_tokens", None)
        sent[deployment.output_limit_param] = per_choice or model.max_output_tokens
    if request.stream:
        sent["stream"] = True
        # Usage is what the request is billed by: ask for it whatever the client asked.
        options = dict(sent.get("stream_options") or {})
        options["include_usage"] = True
        sent["stream_options"] = options
    return orjson.dumps(sent)


@dataclass
class ChatAnswer:
    document: dict[str, Any]
    public_model: str
    endpoint: Endpoint
    usage: TokenUsage | None = field(init=False)

    def __post_init__(self) -> None:
        self.usage = usage_from_upstream(self.document.get("usage"))

    def output_text(self) -> str:
        text: list[str] = []
        for choice in self.document.get("choices") or []:
            if isinstance(choice, dict):
                message = choice.get("message")
                content = (
                    message.get("content") if isinstance(message, dict) else choice.get("text")
                )
                if isinstance(content, str):
                    text.append(content)
        return "".join(text)

    def render(self, charge: Charge) -> bytes:
        self.document["model"] = self.public_model
        priced_response(self.document, charge, completion=self.endpoint != "embeddings")
        return orjson.dumps(self.document)


class ChatRelay:
    """The chat relay (`inference/streams.py`) as the pipeline drives every dialect's."""

    __slots__ = ("_relay",)

    def __init__(self, relay: StreamRelay) -> None:
        self._relay = relay

    @property
    def cut(self) -> bool:
        return self._relay.cut

    def rewrite_all(self, batch: list[bytes]) -> list[Event]:
        return [("", chunk) for chunk in self._relay.rewrite_all(batch)]

    def usage(self, *, complete: bool) -> TokenUsage:
        return self._relay.usage(complete=complete)

    def closing(self, charge: Charge, *, cut: bool) -> list[Event]:
        return [("", chunk) for chunk in self._relay.closing_chunks(charge, cut=cut)]

    def failed(self, charge: Charge, error: KymaError) -> list[Event]:
        return []  # a chat stream's failure is the transport's error event

    def logged(self) -> str:
        return self._relay.delivered_text()


@dataclass
class ChatExchange:
    request: InferenceRequest
    deployment: Deployment
    model: Model
    path: str = field(init=False)
    body: bytes = field(init=False)
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = UPSTREAM_PATHS[self.request.endpoint]
        self.body = chat_body(self.request.body, self.request, self.deployment, self.model)

    def answer(self, raw: bytes) -> ChatAnswer:
        return ChatAnswer(json_object(raw), self.model.name, self.request.endpoint)

    def relay(self) -> ChatRelay:
        request = self.request
        return ChatRelay(
            StreamRelay(
                public_model=self.model.name,
                include_usage=request.include_usage,
                prompt_estimate=request.prompt_tokens_estimate,
                output_limit=output_tokens_to_hold(request, self.model),
            )
        )


class ChatDialect:
    """Chat completions, completions or embeddings (one instance per endpoint)."""

    upstream: UpstreamDialect = "chat"

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def read(
        self,
        raw: bytes,
        *,
        stream: bool | None,
        principal: Principal,
        options: Mapping[str, str],
    ) -> InferenceRequest:
        return parse_request(self.endpoint, raw, stream=stream)

    def exchange(
        self, request: InferenceRequest, deployment: Deployment, model: Model
    ) -> ChatExchange:
        return ChatExchange(request, deployment, model)
