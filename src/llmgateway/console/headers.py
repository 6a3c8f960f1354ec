"""The security headers of every console response: a strict Content-Security-Policy (no inline
script or style, nothing from elsewhere), no framing, no sniffing, no referrer; pages are never
cached, static files (named by their content's digest) are cached for good."""

from __future__ import annotations

from aiohttp import web

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The console's Content-Security-Policy."""
STATIC_CACHE = "public, max-age=31536000, immutable"
"""A static file named with its digest (`?v=`) never changes."""
STATIC_CACHE_UNVERSIONED = "public, max-age=3600"


async def secure(request: web.Request, response: web.StreamResponse) -> None:
    """Add the security headers (and the caching policy) before `response` goes out."""
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    is_static = request.match_info.route.name == "static" and response.status == 200
    if is_static:
        versioned = "v" in request.query
        headers["Cache-Control"] = STATIC_CACHE if versioned else STATIC_CACHE_UNVERSIONED
    else:
        headers["Cache-Control"] = "no-store"
