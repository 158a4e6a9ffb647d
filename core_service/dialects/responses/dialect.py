"""OpenAI's Responses API as a dialect of the pipeline: read (with the stored conversation a
`previous_response_id` continues), then per deployment passed through natively or translated
to chat completions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core_service.billing.metering import output_tokens_to_hold
from core_service.catalog import Deployment, Model
from core_service.clock import Clock
from core_service.dialects.chat import chat_body
from core_service.dialects.common import json_object
from core_service.dialects.responses.chat_stream import TranslatedRelay
from core_service.dialects.responses.from_chat import TranslatedAnswer
from core_service.dialects.responses.native import NativeExchange
from core_service.dialects.responses.request import (
    ResponsesCall,
    not_found,
    parse_body,
    previous_id,
    read_request,
)
from core_service.dialects.responses.store import StoredConversations, conversation
from core_service.dialects.responses.to_chat import ChatTranslation, to_chat
from core_service.dialects.tally import Tally
from core_service.inference.dialect import Exchange
from core_service.logs.responses import new_response_id
from core_service.values import Endpoint, InferenceRequest, Principal, UpstreamDialect


@dataclass
class TranslatedExchange:
    request: InferenceRequest
    deployment: Deployment
    model: Model
    path: str = "chat/completions"
    body: bytes = field(init=False)
    headers: Mapping[str, str] = field(default_factory=dict)
    translation: ChatTranslation = field(init=False)

    def __post_init__(self) -> None:
        call: ResponsesCall = self.request.state
        self.translation = to_chat(call, self.request.max_output_tokens)
        self.body = chat_body(self.translation.body, self.request, self.deployment, self.model)

    def answer(self, raw: bytes) -> TranslatedAnswer:
        return TranslatedAnswer(
            json_object(raw), self.request.state, self.translation, self.model.name
        )

    def relay(self) -> TranslatedRelay:
        tally = Tally(
            prompt_estimate=self.request.prompt_tokens_estimate,
            limit=output_tokens_to_hold(self.request, self.model),
        )
        return TranslatedRelay(self.request.state, self.translation, self.model.name, tally)


class ResponsesDialect:
    endpoint: Endpoint = "responses"
    upstream: UpstreamDialect = "responses"

    def __init__(self, clock: Clock, conversations: StoredConversations | None) -> None:
        self._clock = clock
        self._conversations = conversations

    async def read(
        self,
        raw: bytes,
        *,
        stream: bool | None,
        principal: Principal,
        options: Mapping[str, str],
    ) -> InferenceRequest:
        body = parse_body(raw)
        previous = None
        wanted = previous_id(body)
        if wanted is not None:
            if self._conversations is not None:
                chain = await self._conversations.chain(principal.account_id, wanted)
                previous = conversation(chain) if chain is not None else None
            if previous is None:
                raise not_found(wanted)
        now = self._clock.now()
        return read_request(
            body,
            stream=stream,
            response_id=new_response_id(now),
            created_at=int(now.timestamp()),
            previous=previous,
        )

    def exchange(self, request: InferenceRequest, deployment: Deployment, model: Model) -> Exchange:
        if deployment.speaks("responses"):
            return NativeExchange(request, deployment, model)
        return TranslatedExchange(request, deployment, model)
