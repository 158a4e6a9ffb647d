"""`settle_after_startup`: start-up's objects frozen out of the collector's sight, collections
spaced out (core_service/heap.py says why; the bench measures the effect)."""

from __future__ import annotations

import gc

from core_service.heap import OLDER_EVERY, YOUNG_THRESHOLD, settle_after_startup


def test_startup_objects_are_frozen_and_collections_spaced() -> None:
    before = gc.get_threshold()
    try:
        settle_after_startup()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, OLDER_EVERY, OLDER_EVERY)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
