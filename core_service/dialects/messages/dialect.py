"""Anthropic's Messages API as a dialect of the pipeline (and its count_tokens): read, then per
deployment passed through natively or translated to chat completions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from core_service.catalog import Deployment, Model
from core_service.dialects.chat import chat_body
from core_service.dialects.common import json_object
from core_service.dialects.messages.chat_stream import TranslatedRelay
from core_service.dialects.messages.from_chat import TranslatedAnswer
from core_service.dialects.messages.native import NativeExchange
from core_service.dialects.messages.request import parse_body, read_request
from core_service.dialects.messages.to_chat import to_chat
from core_service.dialects.tally import Tally
from core_service.inference.dialect import Exchange
from core_service.values import Endpoint, InferenceRequest, Principal, UpstreamDialect

# The metadata key under which a caller passes Anthropic's beta flags.
BETAS = "anthropic-beta"


@dataclass
class TranslatedExchange:
    request: InferenceRequest
    deployment: Deployment
    model: Model
    path: str = "chat/completions"
    body: bytes = field(init=False)
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        chat = to_chat(self.request.state)
        self.body = chat_body(chat, self.request, self.deployment, self.model)

    def answer(self, raw: bytes) -> TranslatedAnswer:
        return TranslatedAnswer(json_object(raw), self.request.state, self.model.name)

    def relay(self) -> TranslatedRelay:
        request = self.request
        tally = Tally(
            prompt_estimate=request.prompt_tokens_estimate, limit=request.max_output_tokens
        )
        return TranslatedRelay(
            request.state, self.model.name, tally, request.prompt_tokens_estimate
        )


class MessagesDialect:
    upstream: UpstreamDialect = "messages"

    def __init__(self, *, counting: bool = False) -> None:
        self._counting = counting
        self.endpoint: Endpoint = "messages.count_tokens" if counting else "messages"

    async def read(
        self,
        raw: bytes,
        *,
        stream: bool | None,
        principal: Principal,
        options: Mapping[str, str],
    ) -> InferenceRequest:
        return read_request(
            parse_body(raw), stream=stream, betas=options.get(BETAS, ""), counting=self._counting
        )

    def exchange(self, request: InferenceRequest, deployment: Deployment, model: Model) -> Exchange:
        if deployment.speaks("messages"):
            return NativeExchange(request, deployment, model)
        return TranslatedExchange(request, deployment, model)

    def count_locally(self, request: InferenceRequest) -> bytes:
        """Kyma's own count, where no deployment counts natively."""
        return orjson.dumps({"input_tokens": request.prompt_tokens_estimate})
