"""The API dialects the pipeline serves: OpenAI's chat completions (with completions and
embeddings), OpenAI's Responses API (with its stored conversations) and Anthropic's Messages
API (with its token count)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core_service.clock import Clock
from core_service.dialects.chat import ChatDialect
from core_service.dialects.messages.dialect import MessagesDialect
from core_service.dialects.responses.dialect import ResponsesDialect
from core_service.dialects.responses.store import StoredConversations
from core_service.inference.dialect import Dialect, TokenCounting
from core_service.values import Endpoint


@dataclass(frozen=True)
class Dialects:
    by_endpoint: Mapping[Endpoint, Dialect]
    counting: TokenCounting


def open_dialects(clock: Clock, conversations: StoredConversations | None) -> Dialects:
    return Dialects(
        by_endpoint={
            "chat.completions": ChatDialect("chat.completions"),
            "completions": ChatDialect("completions"),
            "embeddings": ChatDialect("embeddings"),
            "responses": ResponsesDialect(clock, conversations),
            "messages": MessagesDialect(),
        },
        counting=MessagesDialect(counting=True),
    )
