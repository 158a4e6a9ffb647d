"""Relaying an upstream's OpenAI stream: rewriting each chunk for the client and keeping count
of what was delivered, so that usage is known however the stream ends.

A stream is cut at what was held for it (`output_limit`, the output tokens the hold covers):
an upstream that writes past the limit it was sent never gets the excess to the client, who
is never sent tokens it was not charged for; the stream then ends as OpenAI ends one that
reached its limit (finish_reason "length").

Kyma always asks the upstream for usage. The client sees a usage chunk only if it asked for
one (`stream_options.include_usage`), and then always exactly one, last, carrying the charge
(`usage.cost`): the upstream's usage chunk is held back until the stream has ended and the
charge is known (usage an upstream put on a chunk with text moves to that last chunk); if the
upstream sent none, or the stream was cut, the usage is Kyma's count of what was delivered,
marked `"estimated": true`.

Each event is parsed (its text is counted, its usage read), but most are not re-encoded: an
event the client gets as the upstream wrote it but for its model name (no usage to hide or
move, one line, the model written `"model":"…"` once) has the name replaced in its bytes.
Anything else is re-encoded from what was parsed; either way the client reads the same JSON.
"""

from __future__ import annotations

from typing import Any

import orjson

from core_service import tokens
from core_service.billing.metering import Charge
from core_service.errors import UpstreamError
from core_service.inference.costs import priced_usage
from core_service.inference.usage import usage_from_upstream
from core_service.values import TokenUsage


class StreamRelay:
    """One stream's state. `rewrite` turns an upstream event into the chunk the client gets
    (or None to drop it); `usage` is the upstream's report, or Kyma's count of what was relayed."""

    def __init__(
        self,
        *,
        public_model: str,
        include_usage: bool,
        prompt_estimate: int,
        output_limit: int | None = None,
    ) -> None:
        self._public_model = public_model
        self._output_limit = output_limit
        # Set once a chunk would have taken the stream past its limit: nothing more goes out.
        self.cut = False
        self._include_usage = include_usage
        self._prompt_estimate = prompt_estimate
        self._reported: TokenUsage | None = None
        # The upstream's usage object, as it sent it (what the closing usage chunk shows).
        self._reported_object: Any = None
        self._delivered_text: list[str] = []
        # Tokens delivered so far, counted chunk by chunk (a little over the whole text's
        # count, which is what a cut-short stream is billed by: never under it).
        self.delivered_tokens = 0
        self.chunks_delivered = 0
        self._envelope: dict[str, Any] = {}
        self._public_model_field = b'"model":' + orjson.dumps(public_model)
        # The upstream's model name and how it writes it: what `_passed` replaces.
        self._upstream_model: Any = None
        self._upstream_model_field = b""

    @property
    def prompt_tokens(self) -> int:
        """The prompt's tokens: the upstream's count once it reported one, else Kyma's."""
        return self._reported.prompt_tokens if self._reported else self._prompt_estimate

    def rewrite(self, data: bytes) -> bytes | None:
        if self.cut:
            return None
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
            reported = usage_from_upstream(usage)
            if reported is not None:
                self._reported, self._reported_object = reported, usage
        choices = chunk.get("choices")
        if isinstance(choices, list):
            texts = [_text_of(choice) for choice in choices]
            added = sum(tokens.count_tokens(text) for text in texts)
            limit = self._output_limit
            if limit is not None and added and self.delivered_tokens + added > limit:
                self.cut = True
                return None
            self.delivered_tokens += added
            self._delivered_text.extend(text for text in texts if text)
        if not self._envelope:
            self._envelope = {k: chunk[k] for k in ("id", "object", "created") if k in chunk}
        if usage is not None and not choices:
            return None  # the usage chunk: `closing_chunks` sends it, priced, if it was asked for
        if usage is None and (self._include_usage or "usage" not in chunk):
            passed = self._passed(data, chunk)
            if passed is not None:
                self.chunks_delivered += 1
                return passed
        if not self._include_usage:
            # Kyma asked the upstream for usage itself; the client did not, so it sees none.
            chunk.pop("usage", None)
        elif usage is not None:
            chunk["usage"] = None  # as OpenAI sends every chunk but the usage chunk
        if "model" in chunk:
            chunk["model"] = self._public_model
        self.chunks_delivered += 1
        return orjson.dumps(chunk)

    def _passed(self, data: bytes, chunk: dict[str, Any]) -> bytes | None:
        """The event as the upstream wrote it, with the public model name in its bytes; None
        when its bytes do not allow that safely (then it is re-encoded)."""
        if b"\n" in data or b"\r" in data:
            return None  # multi-line data: re-encoded on one line
        if "model" not in chunk:
            return data
        model = chunk["model"]
        if model != self._upstream_model:
            if not isinstance(model, str):
                return None
            self._upstream_model = model
            self._upstream_model_field = b'"model":' + orjson.dumps(model)
        field = self._upstream_model_field
        # `"model"` once in the bytes (a key or a string value anywhere else would be another
        # occurrence; inside a string it is escaped): that one is the top-level key.
        if data.count(b'"model"') != 1 or field not in data:
            return None
        return data.replace(field, self._public_model_field, 1)

    def rewrite_all(self, batch: list[bytes]) -> list[bytes]:
        """`rewrite` for each event of a batch, dropping what the client does not get."""
        out = []
        for data in batch:
            chunk = self.rewrite(data)
            if chunk is not None:
                out.append(chunk)
        return out

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

    def closing_chunks(self, charge: Charge, *, cut: bool) -> list[bytes]:
        """What the client is still owed at the end: the stop of a stream cut at its held
        limit (finish_reason "length"), and the usage chunk it asked for, with the charge."""
        chunks = []
        base = {"object": "chat.completion.chunk", **self._envelope, "model": self._public_model}
        if cut:
            if base.get("object") == "text_completion":
                choice = {"index": 0, "text": "", "finish_reason": "length"}
            else:
                choice = {"index": 0, "delta": {}, "finish_reason": "length"}
            chunks.append(orjson.dumps({**base, "choices": [choice]}))
        if self._include_usage:
            usage = priced_usage(self._reported_object, charge)
            chunks.append(orjson.dumps({**base, "choices": [], "usage": usage}))
        return chunks


def _text_of(choice: Any) -> str:
    if not isinstance(choice, dict):
        return ""
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return text if isinstance(text, str) else ""
