"""Running the core as a process: build it, serve until SIGTERM/SIGINT, then drain and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from sqlalchemy.engine import make_url

from core_service.announce import print_line
from core_service.catalog import CatalogError
from core_service.composition import Core, build_core
from core_service.composition.server import CannotListen
from core_service.db.errors import startup_problem
from core_service.heap import settle_after_startup
from core_service.settings import Settings

log = logging.getLogger(__name__)


def _reload(core: Core) -> None:
    """SIGHUP: read the catalogue file again (a bad file is logged and the running one stays)."""
    with contextlib.suppress(CatalogError):
        core.catalogue.reload()


async def run_core(settings: Settings, *, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; `ready` is told the port once the core serves. A catalogue
    it cannot use, a port it cannot listen on, or a database it cannot reach or is refused by,
    stops it with a line saying so, as an invalid setting does (`settings.read_settings`): the
    operator's to mend, not a fault of Kyma's to show a traceback for. The database's address
    is shown without its password."""
    try:
        core = await build_core(settings)
    except (CatalogError, CannotListen) as error:
        raise SystemExit(f"kyma: {error}") from None
    except Exception as error:
        problem = startup_problem(error)
        if problem is None:
            raise
        if settings.database_url:
            shown = make_url(settings.database_url).render_as_string(hide_password=True)
        else:
            shown = str(settings.sqlite_path)
        raise SystemExit(f"kyma: the database {shown} {problem}") from None
    try:
        await core.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, _reload, core)
        settle_after_startup()
        print_line(f"kyma core listening on {settings.grpc_host}:{core.port}")
        if ready is not None:
            ready(core.port)
        await stop.wait()
        log.info(
            "core shutting down: draining in-flight requests for up to %.0fs",
            settings.shutdown_grace_seconds,
        )
    finally:
        await core.stop()
