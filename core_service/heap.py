"""The garbage collector of a serving process, set once it has started.

CPython's cyclic collector walks every tracked object of the generations it collects. A core
starts with a few hundred thousand of them (modules, SQLAlchemy's and pydantic's structures, the
catalogue) that live as long as the process, and the requests it serves allocate fast enough that
the oldest generation was collected every few seconds: each such pass took 60–70 ms in the core
and 27–35 ms in the bridge, stopping the event loop — every stream in flight stalled that long
(200 paced streams: added inter-chunk delay p99 16–21 ms, the worst gap 125 ms and more).

So once a process serves: what start-up allocated is moved out of the collector's sight
(`gc.freeze`, after one collection so no garbage is frozen), and the youngest generation is
collected every `YOUNG_THRESHOLD` net allocations instead of 700. Request objects are freed by
reference counting as before; only reference cycles wait for a collection a little longer. Same
bench: the oldest generation collected once in the run, in 3 ms; the youngest 10 times instead
of about 400; added delay p99 11–13 ms (`./scripts/bench --modes paced`).
"""

from __future__ import annotations

import gc

# Net allocations between collections of the youngest generation (CPython's default is 700);
# each older generation is collected every tenth collection of the one below it.
YOUNG_THRESHOLD = 10_000
OLDER_EVERY = 10


def settle_after_startup() -> None:
    """Freeze what start-up allocated and space the collections out (see the module)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, OLDER_EVERY, OLDER_EVERY)
