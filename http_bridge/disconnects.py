"""A client that leaves before its answer: the request ends quietly.

The handler that notices (a unary call watching for the disconnect, a body read cut off) raises
`ClientGone`, or Starlette raises its `ClientDisconnect`; either ends the request here with a
response nobody will read, without a traceback. The one INFO line a disconnect is worth is
written by the connection (`http_bridge/protocol.py`), which sees every one of them.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

# nginx's "client closed request": never seen by the client, but counted as such in metrics.
CLIENT_CLOSED_REQUEST = 499


class ClientGone(Exception):
    """The client went away; the core call was cancelled."""


async def _quietly(_request: Request, _exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def end_quietly(app: FastAPI) -> None:
    app.add_exception_handler(ClientGone, _quietly)
    app.add_exception_handler(ClientDisconnect, _quietly)
