"""Stopping the Kyma processes a test started."""

from __future__ import annotations

import asyncio
import signal


async def stop_process(process: asyncio.subprocess.Process, liveness: float) -> None:
    """SIGTERM (a graceful stop) if it still runs; SIGKILL if it has not exited within
    `liveness` seconds (a liveness bound, not a measure of speed)."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), liveness)
    except TimeoutError:
        process.kill()
        await process.wait()
