"""The console's static assets (CSS, its scripts, the vendored chart library), served from the
package.

Every file under `static/` is read once when the bridge starts and served from memory: there is
nothing to build, nothing fetched from outside, and a path that is not one of those files is a
404 (a lookup in a dict: nothing on disk is reached from a URL). Each URL the pages use carries
the file's content hash (`?v=…`), so browsers may keep a file for a year and still get a new
one the moment an upgrade changes it.
"""

from __future__ import annotations

import hashlib
import mimetypes
import pathlib
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

STATIC_DIR = pathlib.Path(__file__).parent / "static"
URL_PREFIX = "/static/"
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    version: str  # the first hex digits of the content's SHA-256

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


class Assets:
    """The files under `directory`, by their path relative to it."""

    def __init__(self, directory: pathlib.Path = STATIC_DIR) -> None:
        self._files: dict[str, Asset] = {}
        for path in sorted(directory.rglob("*")):
            if not path.is_file():
                continue
            body = path.read_bytes()
            media_type = _TYPES.get(path.suffix) or (
                mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            )
            version = hashlib.sha256(body).hexdigest()[:16]
            self._files[path.relative_to(directory).as_posix()] = Asset(body, media_type, version)

    def url(self, name: str) -> str:
        """The versioned URL of `name` (a KeyError for a file that is not shipped: templates
        cannot link to a missing asset)."""
        return f"{URL_PREFIX}{name}?v={self._files[name].version}"

    def response(self, name: str, request: Request) -> Response | None:
        asset = self._files.get(name)
        if asset is None:
            return None
        # A URL naming the current version may be cached for good; any other is revalidated.
        cache = (
            "public, max-age=31536000, immutable"
            if request.query_params.get("v") == asset.version
            else "no-cache"
        )
        headers = {
            "cache-control": cache,
            "etag": asset.etag,
            "x-content-type-options": "nosniff",
        }
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, 200, headers, media_type=asset.media_type)
