"""Reading one field of a multipart/form-data body (the `model` of audio and image uploads)
without parsing, copying or decoding the rest of it (an upload may be 25 MB of audio)."""

from __future__ import annotations

import re

MAX_PART_HEAD = 16 * 1024
MAX_FIELD = 1024
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
_BOUNDARY_NAME = re.compile(r"boundary\*?[ \t]*=", re.IGNORECASE)  # boundary*= is RFC 2231's
_DISPOSITION = re.compile(rb"^content-disposition[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)
# `name="x"`, `name=x` or RFC 2231's `name*=utf-8''x`: every spelling a server might accept
_NAME = re.compile(
    rb"""(?:^|;)[ \t]*name\*?[ \t]*=[ \t]*(?:"([^"]*)"|(?:[\w-]*'[\w-]*')?([^;\s]*))""",
    re.IGNORECASE,
)


class FormError(ValueError):
    """The body is not the multipart form its content type says, or names a field twice."""


def boundary_of(content_type: str) -> str | None:
    """The boundary of a `multipart/form-data` content type, or None for any other type."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    if len(_BOUNDARY_NAME.findall(content_type)) > 1:
        # parsers differ on which one wins: the upstream might read another form
        raise FormError("multipart/form-data names its boundary twice")
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise FormError("multipart/form-data without a boundary")
    return found.group(1) or found.group(2)


def form_field(body: bytes, boundary: str, name: str) -> str | None:
    """The text of the field `name`, None when the form has none; FormError when it appears
    twice (the upstream might read the other one) or the form is malformed."""
    delimiter = b"--" + boundary.encode("latin-1")
    wanted = name.encode()
    found: str | None = None
    at = body.find(delimiter)
    if at < 0:
        raise FormError("the body holds no part of the multipart form")
    while True:
        start = at + len(delimiter)
        if body.startswith(b"--", start):
            return found  # the closing delimiter
        head_end = body.find(b"\r\n\r\n", start, start + MAX_PART_HEAD)
        if head_end < 0:
            raise FormError("a multipart part has no end of its headers")
        nxt = body.find(b"\r\n" + delimiter, head_end)
        if nxt < 0:
            raise FormError("the multipart form is not closed")
        if _part_name(body[start:head_end]) == wanted:
            if found is not None:
                raise FormError(f"the form names {name!r} twice")
            value = body[head_end + 4 : nxt]
            if len(value) > MAX_FIELD:
                raise FormError(f"the form field {name!r} is too long")
            found = value.decode("utf-8", errors="replace")
        at = nxt + 2


def _part_name(head: bytes) -> bytes | None:
    disposition = _DISPOSITION.search(head)
    if disposition is None:
        return None
    named = _NAME.search(disposition.group(1))
    if named is None:
        return None
    return named.group(1) if named.group(1) is not None else named.group(2)
