"""Console sessions: a signed cookie holding a random session id, when it was issued and when
it was last seen; and the CSRF token of a session.

Nothing is kept on the server: the cookie's signing key is derived from `admin.token` with
HMAC and a fixed label, so every keeper behind one URL accepts the same cookie, and a new
token makes every cookie ever issued worthless. A session ends 12 hours after login whatever
happens (absolute), or after an hour without a request (idle); each request re-issues the
cookie with a new last-seen time (sliding).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

SESSION_HOURS = 12
"""A session ends this long after its login, however active."""
IDLE_MINUTES = 60
"""A session ends after this long without a request."""
COOKIE_NAME = "llmgateway_console"
"""The session cookie's name."""
_VERSION = "v1"
_SESSION_LABEL = b"llmgateway console session cookie v1"
_CSRF_LABEL = b"llmgateway console csrf token v1"


@dataclass(frozen=True, slots=True)
class Session:
    """One logged-in browser: `sid` its random id (the audit log's session), `issued` when it
    logged in and `seen` when it last made a request (epoch seconds)."""

    sid: str
    issued: int
    seen: int

    def expired(self, now: float) -> str | None:
        """Why the session is over at `now` (`absolute`, `idle`), or None while it is alive
        (a time in the future, from a clock set back, counts as over)."""
        if now >= self.issued + SESSION_HOURS * 3600 or now < self.issued - 60:
            return "absolute"
        if now >= self.seen + IDLE_MINUTES * 60 or now < self.seen - 60:
            return "idle"
        return None

    def remaining(self, now: float) -> int:
        """Seconds until the absolute end (the cookie's Max-Age)."""
        return max(0, int(self.issued + SESSION_HOURS * 3600 - now))


def new_session(now: float) -> Session:
    """A fresh session at `now`, its id 24 random bytes (`secrets.token_urlsafe`)."""
    return Session(secrets.token_urlsafe(24), int(now), int(now))


def derive(token: str, label: bytes) -> bytes:
    """A key for one purpose (`label`) derived from the admin token (HMAC-SHA256)."""
    return hmac.new(token.encode(), label, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The keys derived from `admin.token`: the cookie's signing key and the CSRF key."""

    cookie: bytes
    csrf: bytes

    @classmethod
    def of(cls, token: str) -> SessionKeys:
        """The keys of `token` (the same on every keeper sharing it)."""
        return cls(derive(token, _SESSION_LABEL), derive(token, _CSRF_LABEL))

    def seal(self, session: Session) -> str:
        """The cookie value of `session`: `v1.sid.issued.seen.signature`."""
        body = f"{_VERSION}.{session.sid}.{session.issued}.{session.seen}"
        return f"{body}.{self._sign(body)}"

    def open(self, value: str) -> Session | None:
        """The session sealed in a cookie value, or None when it is malformed or its signature
        is not ours (checked in constant time before anything in it is believed)."""
        if len(value) > 256:
            return None
        body, _, signature = value.rpartition(".")
        if not hmac.compare_digest(self._sign(body).encode(), signature.encode()):
            return None
        parts = body.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            return None
        _, sid, issued, seen = parts
        if not (issued.isdigit() and seen.isdigit()) or not sid:
            return None
        return Session(sid, int(issued), int(seen))

    def csrf_token(self, session: Session) -> str:
        """The CSRF token of `session`: an HMAC of its id, so it needs no storage."""
        return _b64(hmac.new(self.csrf, session.sid.encode(), hashlib.sha256).digest())

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        """Whether `given` is the CSRF token of `session` (constant-time compare)."""
        if not given:
            return False
        return hmac.compare_digest(self.csrf_token(session).encode(), given.encode())

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self.cookie, body.encode(), hashlib.sha256).digest())


def token_matches(given: str, token: str) -> bool:
    """Whether `given` is the admin `token`: both hashed first, so the compare takes the same
    time whatever their lengths (`hmac.compare_digest`)."""
    want = hashlib.sha256(token.encode()).digest()
    got = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    return bool(token) and hmac.compare_digest(got, want)
