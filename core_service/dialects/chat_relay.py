"""What every relay that turns an upstream's chat-completions stream into another dialect's
events shares: reading each chunk (an error chunk fails the stream, usage goes to the tally,
only the first choice counts), and stopping at the held limit. A dialect supplies how a delta
becomes its events (`_delta`) and what it keeps of the finish (`_finished`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

from core_service.dialects.common import stream_event, upstream_failure
from core_service.dialects.tally import Tally
from core_service.inference.dialect import Event
from core_service.inference.usage import usage_from_upstream


class _Starts(Protocol):
    def start(self) -> Sequence[Event]: ...

    def close(self, index: int) -> list[Event]: ...


_Events = TypeVar("_Events", bound=_Starts)


class ChatStreamTranslation(Generic[_Events]):
    _tally: Tally
    _events: _Events
    _started: bool
    _finish: Any

    @property
    def cut(self) -> bool:
        return self._tally.cut

    def _close(self, index: int | None) -> list[Event]:
        """The events that close an open block or item (none when nothing is open)."""
        return [] if index is None else self._events.close(index)

    def _delta(self, delta: dict[str, Any], out: list[Event]) -> bool:
        """Add the events of one delta to `out`; False once the held limit cut the stream."""
        raise NotImplementedError

    def _finished(self, choice: dict[str, Any]) -> None:
        self._finish = choice["finish_reason"]

    def rewrite_all(self, batch: list[bytes]) -> list[Event]:
        out: list[Event] = []
        if not self._started:
            self._started = True
            out.extend(self._events.start())
        for data in batch:
            if self._tally.cut:
                break
            chunk = stream_event(data)
            if "error" in chunk:
                raise upstream_failure(chunk)
            self._tally.report(usage_from_upstream(chunk.get("usage")))
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                if isinstance(delta, dict) and not self._delta(delta, out):
                    return out
                if choice.get("finish_reason") is not None:
                    self._finished(choice)
        return out
