"""Page sizes of the admin list RPCs."""

from __future__ import annotations

from core_service.errors import InvalidRequest

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500


def page_size(size: int) -> int:
    """0 (unset) is the default; anything else must be 1 to MAX_PAGE_SIZE."""
    if size == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page_size must be 1 to {MAX_PAGE_SIZE}.", param="page_size")
    return size
