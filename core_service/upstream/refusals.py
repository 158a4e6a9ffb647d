"""What an upstream said when it refused or failed, made fit for the client to read.

The client is told the upstream's own reason — "Input should be 'text' or 'json_object'"
helps, "please retry" does not — but never where the upstream is, with what key, or what it
calls the model internally: URLs, hostnames, bearer tokens and key-like strings, and the
deployment's own names are taken out, control characters dropped, and the text shortened.
"""

from __future__ import annotations

import re

import orjson

from core_service.catalog import Deployment

MAX_REASON_CHARS = 300

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_BEARER = re.compile(r"\bbearer\s+\S+", re.IGNORECASE)
# Secret-looking tokens: sk-…, key-…, ky_…, long hex or base64 runs.
_SECRET = re.compile(
    r"\b(?:sk|pk|rk|key|ky|api)[-_][A-Za-z0-9_\-]{8,}|\b[A-Fa-f0-9]{32,}\b|\b[A-Za-z0-9+/_\-]{40,}={0,2}"
)
_HOST = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b")


def upstream_reason(body: bytes) -> str | None:
    """The `error.message` (or `detail`, `message`, `error` string) an upstream sent, if any."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    for candidate in (
        error.get("message") if isinstance(error, dict) else error,
        parsed.get("detail"),
        parsed.get("message"),
    ):
        if isinstance(candidate, str) and candidate.strip():
            return candidate
        if isinstance(candidate, list) and candidate and isinstance(candidate[0], dict):
            # FastAPI-style validation details (vLLM, llama.cpp's server, TGI).
            message = candidate[0].get("msg")
            if isinstance(message, str):
                return message
    return None


def sanitized(reason: str, deployment: Deployment) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in reason)
    for secret in _secrets_of(deployment):
        text = text.replace(secret, "[redacted]")
    text = _URL.sub("[url]", text)
    text = _BEARER.sub("[redacted]", text)
    text = _SECRET.sub("[redacted]", text)
    text = _HOST.sub("[host]", text)
    for internal in (deployment.model, deployment.name):
        if internal and len(internal) >= 3:
            text = text.replace(internal, "the model")
    text = " ".join(text.split())
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1].rstrip() + "…"
    return text


def _secrets_of(deployment: Deployment) -> list[str]:
    found = []
    if deployment.api_key is not None:
        found.append(deployment.api_key.get_secret_value())
    host = deployment.base_url.split("://", 1)[-1].split("/", 1)[0]
    if host:
        found.append(host)
    found.append(deployment.base_url)
    return [s for s in found if s]
