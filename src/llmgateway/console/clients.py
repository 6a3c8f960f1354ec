"""The clients page: every client (stored ones, then the read-only ones the config declares)
with its state, token ends, reach, limits, quota spend, expiry, ranges, notes and tokens of
the last day and week; and what `llmgateway clients` does to a stored one: create, update,
disable, enable, rotate with a grace, delete after a confirmation. Every action is a POST
(CSRF-checked by the auth middleware), bounded, recorded in the audit log (the client's name
and what changed, never a secret), refused with a message for a config client. A new secret
is shown once, in the answer to the POST that made it, and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from llmgateway.client_edits import NAME_RULE, config_token, new_client, read_only, rotation
from llmgateway.config.route_settings import valid_name
from llmgateway.console.auth import actor
from llmgateway.console.client_form import Form, changes_of, grace_of, read_form, shown_form
from llmgateway.console.client_rows import client_rows, one_client
from llmgateway.console.context import Console
from llmgateway.console.render import render
from llmgateway.store import audit
from llmgateway.store import clients as stored

ACTIONS = ("update", "disable", "enable", "rotate", "delete")
DONE = {"updated", "disabled", "enabled", "deleted"}
"""What `?done=` may say after an action (the page's notice)."""
VERB = {"update": "change", "disable": "remove", "enable": "add", "rotate": "rotate"}
"""How the read-only refusal names each action (as the CLI does)."""


def routes(console: Console) -> list[web.RouteDef]:
    """The clients page, a client's page, and the actions."""

    async def listed(request: web.Request) -> web.Response:
        return await _listing(request, console, Outcome(_notice(request)))

    async def create(request: web.Request) -> web.Response:
        return await _create(request, console)

    async def detail(request: web.Request) -> web.Response:
        name = _name(request)
        return await _detail(request, console, name, Outcome(_notice(request, name)))

    async def confirm(request: web.Request) -> web.Response:
        name = _name(request)
        refused = await _refused(request, console, name, "remove")
        return refused or render(request, "client_delete.html", name=name, problems=[])

    async def act(request: web.Request) -> web.Response:
        return await _act(request, console, _name(request), request.match_info["action"])

    return [
        web.get("/clients", listed, name="clients"),
        web.post("/clients", create, name="client-create"),
        web.get("/clients/{name}", detail, name="client"),
        web.get("/clients/{name}/delete", confirm, name="client-delete-confirm"),
        web.post("/clients/{name}/{action}", act, name="client-action"),
    ]


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not valid_name(name):
        raise web.HTTPNotFound(text="no such client")
    return name


def _notice(request: web.Request, name: str | None = None) -> str:
    done, whom = request.query.get("done", ""), request.query.get("name", name or "")
    if done not in DONE or not valid_name(whom):
        return ""
    return f"Client {whom} {done}."


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a page shows beside the client(s): a notice, or the problems of a refused form
    (with its fields as typed, and the status to answer)."""

    notice: str = ""
    problems: tuple[str, ...] = ()
    typed: dict[str, str] | None = None

    @classmethod
    def refused(cls, problems: list[str], typed: dict[str, str] | None = None) -> Outcome:
        """A refused form's outcome."""
        return cls(problems=tuple(problems), typed=typed)

    @property
    def status(self) -> int:
        """400 when something was refused, else 200."""
        return 400 if self.problems else 200

    def shown(self, form: dict[str, str]) -> dict[str, Any]:
        """The template's context: `form` unless the fields typed are to be shown again."""
        typed = self.typed if self.typed is not None else form
        return {"notice": self.notice, "problems": list(self.problems), "form": typed}


async def _listing(
    request: web.Request, console: Console, outcome: Outcome = Outcome()
) -> web.Response:
    rows = await client_rows(console)
    context = outcome.shown({"routes": "*"})
    return render(request, "clients.html", status=outcome.status, rows=rows, **context)


async def _create(request: web.Request, console: Console) -> web.Response:
    form = await read_form(request)
    name = str(form.get("name", "")).strip()
    now = console.clock()
    values, fields = changes_of(form, now, new=True)
    problems = fields.problems
    if not valid_name(name):
        problems.insert(0, f"name: {NAME_RULE}")
    elif config_token(console.settings, name) is not None:
        problems.insert(0, f"client {name!r} is already declared in the config file")
    if not problems:
        secret, columns = new_client(name, values)
        try:
            await stored.create(console.store.engine, columns, now)
        except stored.NameTaken:
            problems.append(f"a client named {name!r} exists already")
        else:
            await audit.record(console.store, actor(request), "client create", name, 0)
            return _secret(request, name, secret, "created", status=201)
    typed = {**fields.typed, "name": name[:64]}
    return await _listing(request, console, Outcome.refused(problems, typed))


def _secret(request: web.Request, name: str, secret: str, done: str, status: int) -> web.Response:
    """The one answer that holds a new secret."""
    return render(request, "client_secret.html", status=status, name=name, secret=secret, done=done)


async def _refused(
    request: web.Request, console: Console, name: str, verb: str
) -> web.Response | None:
    """The answer for a config client (409) or no client of that name (404); None: stored."""
    if config_token(console.settings, name) is not None:
        return _message(request, 409, "Read-only client", read_only(name, verb))
    if await stored.find(console.store.engine, name) is None:
        return _message(request, 404, "No such client", f"no client named {name!r}")
    return None


def _message(request: web.Request, status: int, title: str, text: str) -> web.Response:
    return render(request, "client_refused.html", status=status, title=title, text=text)


async def _detail(
    request: web.Request, console: Console, name: str, outcome: Outcome = Outcome()
) -> web.Response:
    row = await one_client(console, name)
    if row is None:
        return _message(request, 404, "No such client", f"no client named {name!r}")
    shown_only = read_only(name, "change") if row["source"] == "config" else ""
    context = outcome.shown(shown_form(row))
    return render(
        request, "client.html", status=outcome.status, row=row, read_only=shown_only, **context
    )


async def _act(request: web.Request, console: Console, name: str, action: str) -> web.Response:
    if action not in ACTIONS:
        raise web.HTTPNotFound(text="no such client action")
    form = await read_form(request)
    refused = await _refused(request, console, name, VERB.get(action, "remove"))
    if refused is not None:
        return refused
    if action == "rotate":
        return await _rotate(request, console, name, form)
    if action == "delete":
        return await _delete(request, console, name, form)
    return await _change(request, console, name, action, form)


async def _change(
    request: web.Request, console: Console, name: str, action: str, form: Form
) -> web.Response:
    if action == "update":
        values, fields = changes_of(form, console.clock())
        if fields.problems or not values:
            problems = fields.problems or ["nothing to change"]
            return await _detail(request, console, name, Outcome.refused(problems, fields.typed))
        detail = f"{name}: {', '.join(sorted(values))}"
    else:
        values, detail = {"enabled": action == "enable"}, name
    if not await stored.change(console.store.engine, name, values, console.clock()):
        return _message(request, 404, "No such client", f"no client named {name!r}")
    await audit.record(console.store, actor(request), f"client {action}", detail, 0)
    done = f"{action}d" if action.endswith("e") else f"{action}ed"
    if action == "update":
        raise web.HTTPSeeOther(f"/admin/clients/{name}?done={done}")
    raise web.HTTPSeeOther(f"/admin/clients?done={done}&name={name}")


async def _rotate(request: web.Request, console: Console, name: str, form: Form) -> web.Response:
    grace, fields = grace_of(form)
    found = await stored.find(console.store.engine, name)
    if grace is None or found is None:
        problems = fields.problems or [f"no client named {name!r}"]
        return await _detail(request, console, name, Outcome.refused(problems))
    now = console.clock()
    secret, values = rotation(found, grace, now)
    await stored.change(console.store.engine, name, values, now)
    shown_grace = fields.typed.get("grace", "").strip() or "0h"
    await audit.record(
        console.store, actor(request), "client rotate", f"{name} (grace {shown_grace})", 0
    )
    return _secret(request, name, secret, "rotated", status=201)


async def _delete(request: web.Request, console: Console, name: str, form: Form) -> web.Response:
    if form.get("confirm") != name:
        problems = [f"type the client's name ({name}) to confirm"]
        return render(request, "client_delete.html", status=400, name=name, problems=problems)
    if not await stored.delete(console.store.engine, name):
        return _message(request, 404, "No such client", f"no client named {name!r}")
    await audit.record(console.store, actor(request), "client delete", name, 0)
    raise web.HTTPSeeOther(f"/admin/clients?done=deleted&name={name}")
