"""The console's bulk jobs: `POST /admin/jobs` submits an action on every key the keys
page's filter selects (the set fixed at that moment, recorded in the audit log), which the
Keeper runs in the background (`keeper.bulk_jobs`); `GET /admin/jobs/{id}` is its progress,
a fragment htmx polls every second until the job has finished; `GET /admin/jobs` the recent
jobs; `POST /admin/jobs/{id}/cancel` stops one where it stands. A submission refused (400) is
shown in the keys page's bulk region (`BULK_REGION`), or as a page of its own without htmx."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from llmgateway.console.auth import actor
from llmgateway.console.context import Console
from llmgateway.console.key_filter import FilterForm
from llmgateway.console.render import is_partial, render
from llmgateway.key_filter import FilterError
from llmgateway.store import audit
from llmgateway.store.jobs import Job, cancel, job, recent_jobs, submit
from llmgateway.store.key_actions import Action

RECENT = 10
"""Jobs listed on the jobs page (and on the overview)."""
ALL_FIELD = "all"
"""The field that must be `1` to act on every key (a filter that narrows nothing)."""
BULK_REGION = "bulk-result"
"""The keys page's region for its bulk form's answer: a refusal is shown there (htmx), a job
submitted sends the browser on to the job's page."""


def routes(console: Console) -> list[web.RouteDef]:
    """The jobs' routes."""

    async def create(request: web.Request) -> web.Response:
        form = await request.post()
        try:
            action = Action(str(form.get("action", "")))
        except ValueError:
            return _refused(request, f"action is one of {', '.join(a.value for a in Action)}")
        try:
            chosen_form = FilterForm.of(form)
            chosen = chosen_form.chosen()
        except FilterError as error:
            return _refused(request, str(error))
        if not chosen_form.narrows and form.get(ALL_FIELD) != "1":
            return _refused(request, "no filter: that is every key; send all=1 to mean it")
        job_id = await submit(console.store, action, chosen, actor(request))
        submitted = await job(console.store, job_id)
        assert submitted is not None  # just written
        if request.headers.get("HX-Target") == BULK_REGION:  # the keys page's bulk form
            return web.Response(status=201, headers={"HX-Redirect": f"/admin/jobs/{job_id}"})
        if is_partial(request) or "Authorization" in request.headers:
            return _progress(request, submitted, status=201)
        raise web.HTTPSeeOther(f"/admin/jobs/{job_id}")

    async def progress(request: web.Request) -> web.Response:
        found = await _job_of(request, console)
        if is_partial(request):
            return _progress(request, found)
        return render(request, "job.html", job=found, **_shown(found))

    async def stop(request: web.Request) -> web.Response:
        found = await _job_of(request, console)
        if await cancel(console.store, found.id):
            detail = f"job {found.id} ({found.action.value}, {found.done} of {found.total} done)"
            await audit.record(console.store, actor(request), "cancel", detail, found.total)
        stopped = await _job_of(request, console)
        if is_partial(request) or "Authorization" in request.headers:
            return _progress(request, stopped)
        raise web.HTTPSeeOther(f"/admin/jobs/{found.id}")

    async def listed(request: web.Request) -> web.Response:
        jobs = await recent_jobs(console.store, RECENT)
        name = "_jobs_recent.html" if is_partial(request) else "jobs.html"
        return render(request, name, jobs=jobs)

    return [
        web.post("/jobs", create, name="job-create"),
        web.get("/jobs", listed, name="jobs"),
        web.get(r"/jobs/{id:\d{1,12}}", progress, name="job"),
        web.post(r"/jobs/{id:\d{1,12}}/cancel", stop, name="job-cancel"),
    ]


async def _job_of(request: web.Request, console: Console) -> Job:
    found = await job(console.store, int(request.match_info["id"]))
    if found is None:
        raise web.HTTPNotFound(text="no such job")
    return found


def _shown(found: Job) -> dict[str, Any]:
    """What the progress fragment shows beside the job itself."""
    return {"chosen": found.chosen.describe(), "who": _who(found)}


def _who(found: Job) -> str:
    """Who submitted the job, briefly: the CLI, a script (Bearer) or a console session."""
    session = found.actor.session
    if session in ("cli", "bearer"):
        return session
    return f"session {session[:8]}"


def _progress(request: web.Request, found: Job, status: int = 200) -> web.Response:
    return render(request, "_job.html", status=status, job=found, **_shown(found))


def _refused(request: web.Request, why: str) -> web.Response:
    """The refusal as a fragment (htmx, scripts), or as a page (a plain form, no JavaScript)."""
    if is_partial(request) or "Authorization" in request.headers:
        return render(request, "_job_refused.html", status=400, why=why)
    return render(request, "job_refused.html", status=400, why=why)
