"""Serving the built console: hashed assets cached for a year, ``index.html`` for every client route.

The routes are public and belong to no tenant (``module`` is cleared): the console is loaded
before anyone signs in, and the API calls it makes carry their own token and tenant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from litestar import Response, get

from kernel import sdk

__all__ = ["CONTENT_SECURITY_POLICY", "ROUTES", "STATIC_DIR"]

STATIC_DIR: Final = Path(__file__).parent / "static"
ASSETS_PREFIX: Final = "assets/"

CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        # React sets style properties through the CSSOM, which style-src does not govern: no inline CSS.
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ]
)
IMMUTABLE: Final = "public, max-age=31536000, immutable"
NO_CACHE: Final = "no-cache"

# Litestar adds "; charset=utf-8" to text/* itself.
MEDIA_TYPES: Final = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".woff2": "font/woff2",
    ".txt": "text/plain",
}

# Route opts: anyone may load the files, and no tenant is involved (the router's module is cleared).
SITE: Final = {"permission": sdk.PUBLIC, "module": None}


def _headers(cache_control: str) -> dict[str, str]:
    return {
        "Cache-Control": cache_control,
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Cross-Origin-Opener-Policy": "same-origin",
    }


def _asset(relative: str) -> Path | None:
    """The file under ``static/assets`` that ``relative`` names, or None (also for ``..`` tricks)."""
    root = STATIC_DIR.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root / "assets") or not candidate.is_file():
        return None
    return candidate


def _index() -> Response[bytes]:
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        raise sdk.NotFound("the console is not built: run `npm ci && npm run build` in plugins/console/web")
    return Response(index.read_bytes(), media_type=MEDIA_TYPES[".html"], headers=_headers(NO_CACHE))


@get("/console", opt=SITE, include_in_schema=False, sync_to_thread=False)
def console_index() -> Response[bytes]:
    """The console's page."""
    return _index()


@get("/console/{path:path}", opt=SITE, include_in_schema=False, sync_to_thread=False)
def console_file(path: str) -> Response[bytes]:
    """A hashed asset (cached for a year), or the page itself for a client-side route."""
    relative = path.lstrip("/")
    if relative.startswith(ASSETS_PREFIX):
        asset = _asset(relative)
        if asset is None:
            raise sdk.NotFound(f"no console asset {relative}")
        media_type = MEDIA_TYPES.get(asset.suffix, "application/octet-stream")
        return Response(asset.read_bytes(), media_type=media_type, headers=_headers(IMMUTABLE))
    return _index()


ROUTES = [console_index, console_file]
