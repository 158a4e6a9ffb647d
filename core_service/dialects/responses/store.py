"""Where stored responses come from: the conversation a `previous_response_id` continues.

The store itself is the request log's (`core_service.logs.responses`): a stored response lives
and dies with its request's log row. This protocol is all the dialect needs of it; the
conversation is rebuilt here from the stored requests and responses.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from core_service.dialects.responses.request import input_items
from core_service.errors import InvalidRequest


class StoredConversations(Protocol):
    async def chain(self, account_id: str, response_id: str) -> list[tuple[str, str]] | None:
        """(request body, response body) of the response `response_id` of `account_id` and of
        every stored response it continues, oldest first; None if there is no such stored
        response (or one it continues is gone)."""
        ...


def conversation(chain: list[tuple[str, str]]) -> list[dict[str, Any]] | None:
    """Every input and output of a stored conversation, in order, as input items (None when a
    stored body cannot be read back)."""
    items: list[dict[str, Any]] = []
    try:
        for request_body, response_body in chain:
            request, response = orjson.loads(request_body), orjson.loads(response_body)
            items.extend(input_items(request))
            items.extend(item for item in response.get("output") or [] if isinstance(item, dict))
    except (orjson.JSONDecodeError, AttributeError, InvalidRequest):
        return None
    return items
