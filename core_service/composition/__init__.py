"""The composition root of the core: every part is built once, here, and handed its
dependencies; nothing else constructs an engine, a client or a service.

The build is split by subsystem (storage, limits, upstreams and routing, accounts, billing,
the gRPC server), each a function that opens what it needs on one AsyncExitStack, so a
failure at any step closes what the steps before it opened, and a stop closes everything in
the reverse order of opening. `build_core` returns a `Core`; `Core.start()` serves it.
"""

from core_service.composition.core import Core, build_core

__all__ = ["Core", "build_core"]
