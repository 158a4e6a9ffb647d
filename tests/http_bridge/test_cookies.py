"""The session cookie's attributes, and from which requests it is read (`http_bridge/cookies.py`)."""

from __future__ import annotations

from types import SimpleNamespace

from google.protobuf import timestamp_pb2
from starlette.requests import Request
from starlette.responses import Response

from core_service.settings import Settings
from http_bridge.cookies import same_origin, session_token, set_session_cookie
from kyma.accounting.v1 import accounting_service_pb2 as pb

TOKEN = "kys_" + "a" * 43


def _request(
    scheme: str = "http", public: str = "http://127.0.0.1:8000", **headers: str
) -> Request:
    app = SimpleNamespace(state=SimpleNamespace(settings=Settings(public_base_url=public)))
    scope = {
        "type": "http",
        "scheme": scheme,
        "method": "GET",
        "path": "/v1/account",
        "query_string": b"",
        "server": ("kyma.example", 443 if scheme == "https" else 80),
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "app": app,
    }
    return Request(scope)


def _session() -> pb.Session:
    return pb.Session(
        created_at=timestamp_pb2.Timestamp(seconds=1000),
        expires_at=timestamp_pb2.Timestamp(seconds=1000 + 3600),
    )


def test_secure_over_tls_or_behind_an_https_public_url() -> None:
    for request in (
        _request("https", host="kyma.example"),
        _request("http", public="https://kyma.example", host="kyma.example"),
    ):
        response = Response()
        set_session_cookie(request, response, TOKEN, _session())
        cookie = response.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
        assert "max-age=3600" in cookie


def test_the_cookie_is_read_only_from_the_own_origin() -> None:
    cookie = f"kyma_session={TOKEN}"
    own = _request("https", public="https://kyma.example", host="kyma.example", cookie=cookie)
    assert session_token(own) == TOKEN
    assert same_origin(_request("https", host="kyma.example", origin="https://kyma.example"))
    for foreign in (
        _request("https", host="kyma.example", origin="https://evil.example", cookie=cookie),
        _request("https", host="kyma.example", origin="null", cookie=cookie),
        _request("https", host="kyma.example", sec_fetch_site="cross-site", cookie=cookie),
        _request(
            "https",
            host="kyma.example",
            sec_fetch_site="cross-site",
            sec_fetch_mode="cors",
            cookie=cookie,
        ),
    ):
        assert session_token(foreign) is None
    # A person following a link from elsewhere (or back from Stripe) is still signed in.
    arriving = _request(
        "https",
        public="https://kyma.example",
        host="kyma.example",
        sec_fetch_site="cross-site",
        sec_fetch_mode="navigate",
        cookie=cookie,
    )
    assert session_token(arriving) == TOKEN
