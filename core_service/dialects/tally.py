"""Counting what a stream delivers, in any dialect: the output tokens relayed (so a stream is cut
at what was held, and charged for what it delivered when it ends early) and the usage the
upstream reported (what a complete stream is charged by).

A delta that would take the stream past its limit is not delivered: the stream is cut there
and the client is never sent tokens it was not charged for.
"""

from __future__ import annotations

from core_service import tokens
from core_service.values import TokenUsage


class Tally:
    __slots__ = ("_limit", "_prompt_estimate", "reported", "delivered_tokens", "cut")

    def __init__(self, *, prompt_estimate: int, limit: int | None) -> None:
        self._limit = limit
        self._prompt_estimate = prompt_estimate
        # The upstream's own report (the last believable one), if any.
        self.reported: TokenUsage | None = None
        # Counted delta by delta (a little over the whole text's count: never under it).
        self.delivered_tokens = 0
        self.cut = False

    def admit(self, text: str) -> bool:
        """Count a delta; False (and the stream is cut) when it would pass the limit."""
        if self.cut:
            return False
        added = tokens.count_tokens(text) if text else 0
        if self._limit is not None and added and self.delivered_tokens + added > self._limit:
            self.cut = True
            return False
        self.delivered_tokens += added
        return True

    def report(self, usage: TokenUsage | None) -> None:
        if usage is not None:
            self.reported = usage

    def usage(self, *, complete: bool) -> TokenUsage:
        """The upstream's report for a stream that completed; otherwise the tokens delivered,
        with the prompt as the upstream reported it (or Kyma's estimate), marked estimated."""
        reported = self.reported
        if reported is not None and complete:
            return reported
        if reported is not None:
            return TokenUsage(
                reported.prompt_tokens,
                self.delivered_tokens,
                estimated=True,
                cached_tokens=reported.cached_tokens,
                cache_write_tokens=reported.cache_write_tokens,
            )
        return TokenUsage(self._prompt_estimate, self.delivered_tokens, estimated=True)
