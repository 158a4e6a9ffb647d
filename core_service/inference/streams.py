"""Relaying an upstream's OpenAI stream: rewriting each chunk for the client and keeping count
of what was delivered, so that usage is known however the stream ends."""

from __future__ import annotations

from typing import Any

import orjson

from core_service import tokens
from core_service.errors import UpstreamError
from core_service.inference.usage import usage_from_upstream
from core_service.values import TokenUsage


class StreamRelay:
    """One stream's state. `rewrite` turns an upstream event into the chunk the client gets
    (or None to drop it); `usage` is the upstream's report, or Kyma's count of what was relayed."""

    def __init__(self, *, public_model: str, include_usage: bool, prompt_estimate: int) -> None:
        self._public_model = public_model
        self._include_usage = include_usage
        self._prompt_estimate = prompt_estimate
        self._reported: TokenUsage | None = None
        self._delivered_text: list[str] = []
        self.chunks_delivered = 0

    def rewrite(self, data: bytes) -> bytes | None:
        try:
            chunk: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("The model's upstream sent a malformed stream event.") from None
        if not isinstance(chunk, dict):
            raise UpstreamError("The model's upstream sent a malformed stream event.")
        if "error" in chunk:
            error = chunk.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            raise UpstreamError(f"The model's upstream failed mid-stream: {message or 'error'}")
        usage = chunk.get("usage")
        if usage is not None:
            self._reported = usage_from_upstream(usage) or self._reported
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                self._collect(choice)
        if not self._include_usage:
            # Kyma asked the upstream for usage itself; the client did not, so it sees none.
            if usage is not None and not choices:
                return None
            chunk.pop("usage", None)
        if "model" in chunk:
            chunk["model"] = self._public_model
        self.chunks_delivered += 1
        return orjson.dumps(chunk)

    def rewrite_all(self, batch: list[bytes]) -> list[bytes]:
        """`rewrite` for each event of a batch, dropping what the client does not get."""
        out = []
        for data in batch:
            chunk = self.rewrite(data)
            if chunk is not None:
                out.append(chunk)
        return out

    def _collect(self, choice: Any) -> None:
        if not isinstance(choice, dict):
            return
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str) and text:
            self._delivered_text.append(text)

    def delivered_text(self) -> str:
        return "".join(self._delivered_text)

    def usage(self, *, complete: bool) -> TokenUsage:
        """Usage to charge. A stream that ended early is charged for the tokens relayed: the
        upstream's count when it sent one, else Kyma's count of the delivered text."""
        if self._reported is not None and complete:
            return self._reported
        counted = tokens.count_tokens(self.delivered_text())
        if self._reported is not None:
            return TokenUsage(self._reported.prompt_tokens, max(counted, 0), estimated=True)
        return TokenUsage(self._prompt_estimate, counted, estimated=True)
