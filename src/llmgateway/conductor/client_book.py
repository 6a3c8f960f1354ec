"""The stored clients made ready for the request path: each enabled client's grants by the
SHA-256 of its token (and of its previous token while a rotation's grace lasts), worked out
against the route table in force, so that a request's lookup is one dict lookup."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from llmgateway.config.route_table import RouteTable
from llmgateway.core.routes import Grants
from llmgateway.store.clients import ClientRecord

log = logging.getLogger("llmgateway.app")


def client_grants(
    records: Sequence[ClientRecord], table: RouteTable, now: float
) -> dict[bytes, Grants]:
    """The grants of every enabled client in `records`, by token digest. A client whose
    stored rules no longer parse is left out (logged by name): it is refused, not let in
    without them."""
    found: dict[bytes, Grants] = {}
    for record in records:
        if not record.enabled:
            continue
        try:
            rules = record.rules()
        except ValueError:
            log.warning("client %s: its stored rules do not parse; refused", record.name)
            continue
        grants = table.grants_for(record.name, record.routes, record.providers, rules)
        found[bytes.fromhex(record.token_sha256)] = grants
        until = record.previous_until
        if record.previous_sha256 and until is not None and until > now:
            ends = until if rules.expires_at is None else min(until, rules.expires_at)
            old = dataclasses.replace(rules, expires_at=ends)
            found[bytes.fromhex(record.previous_sha256)] = dataclasses.replace(grants, client=old)
    return found


def grace_ends(records: Sequence[ClientRecord], now: float) -> float | None:
    """The earliest end of a rotation's grace still to come among `records` (None: none), when
    the grants are built again without the old token."""
    ends = [
        record.previous_until
        for record in records
        if record.enabled and record.previous_sha256 and record.previous_until is not None
    ]
    return min((until for until in ends if until > now), default=None)
