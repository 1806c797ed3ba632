"""The seed's HTTP job API on aiohttp: ``POST /job/``, ``GET /query/<uid>``, ``DELETE /job/<uid>``.

Contract (gaussian-blur-job-server.txt), for every pipeline::

    POST /job/        {"job_name": "3dblur", "in_dir": "dicom_data", ...parameters}
                      → 201 {"uid": ...}
    GET  /query/<uid> → 202 {"msg": "Job is running"}                       queued or running
                      → 200 {"msg": "Job has completed", "output_dir": ...} done
                            (+ "dispatch": {"state", "destination", …} where a DICOM rule sends it)
                      → 500 {"msg": "Job has failed", "error": ..., "stage": ...}
                      → 410 {"msg": "Job was cancelled", "error": "Cancelled by … at …"}
                      → 404 unknown uid
    DELETE /job/<uid> → 202 {"msg": "Job is being cancelled"}; 409 it had already ended
    GET  /status      an HTML page of the most recent jobs, for people (refreshes itself)

Refusals: 400 malformed JSON, unknown job_name or bad parameters; 401 missing or wrong
bearer token (when ``CARINA_API_TOKEN`` is set); 403 a path outside ``CARINA_DATA_ROOT``;
413 a body over ``CARINA_API_MAX_BODY_BYTES``; 415 not JSON; 503 Redis unreachable.
Paths in requests and responses are relative to the data root. This process imports no
imaging code: it queues tasks by name.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import redis
from aiohttp import web
from celery import Celery

from queues.confine import check_input, inside, real_roots
from queues.connection import connect
from queues.errors import (BrokerUnavailable, InvalidJobRequest, PathRefused, UnknownJob,
                           UnknownPipeline)
from queues.jobs import CANCELLED, DONE, FAILED, JobStore
from queues.catalogue import catalogue, get_pipeline
from queues.pipelines import cancel, submit
from queues.listeners import bearer_matches, check_listener
from queues.settings import DEFAULT_PRIORITY, PRIORITIES, Settings

log = logging.getLogger(__name__)
RESULTS_DIR = "results"
PUBLIC_PATHS = frozenset({"/openapi.json"})
SETTINGS = web.AppKey("settings", Settings)
CELERY = web.AppKey("celery", Celery)
JOBS = web.AppKey("jobs", JobStore)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def resolve_inside(settings: Settings, requested: Any, field: str) -> Path:
    """``requested`` (relative to the first data root, or absolute) as a real path inside the
    data roots, with everything under it and every data file its headers name.

    Raises:
        InvalidJobRequest: not a non-empty string, or nothing there.
        PathRefused: ``..`` in it, or it (a link, a header's data file) leads outside the roots.
    """
    if not isinstance(requested, str) or not requested.strip() or "\x00" in requested:
        raise InvalidJobRequest(f"{field} must be a non-empty path relative to the data root")
    candidate = Path(requested)
    if ".." in candidate.parts:
        raise PathRefused(f"{field} {requested!r}: '..' is not allowed")
    roots = real_roots(settings.data_roots)
    path = candidate if candidate.is_absolute() else roots[0] / candidate
    check_input(path, roots, field)
    if not path.exists():
        raise InvalidJobRequest(f"{field} {requested!r} does not exist in the data root")
    return inside(path, roots, field)


def _json(status: int, **body: Any) -> web.Response:
    return web.json_response(body, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.content_type == "application/json":
            raise
        return _json(e.status, msg=e.reason, error=e.text if e.text != f"{e.status}: {e.reason}" else e.reason)
    except PathRefused as e:
        log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, e)
        return _json(403, msg="Forbidden", error=str(e))
    except (UnknownPipeline, InvalidJobRequest) as e:
        return _json(400, msg="Bad request", error=str(e))
    except UnknownJob as e:
        return _json(404, msg="Not found", error=str(e))
    except BrokerUnavailable as e:
        log.error("%s", e)
        return _json(503, msg="Service unavailable", error="the job queue cannot be reached")


@web.middleware
async def bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[SETTINGS].api_token
    if token and request.path not in PUBLIC_PATHS:
        if not bearer_matches(request.headers.get("Authorization", ""), token):
            log.warning("refused %s %s from %s: no valid bearer token", request.method, request.path, request.remote)
            return web.json_response({"msg": "Unauthorized", "error": "a valid bearer token is required"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def post_job(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return _json(415, msg="Unsupported media type", error="send the job as application/json")
    body = parse_json_object(await request.read(), request.charset)
    pipeline = body.pop("job_name", None)
    if not isinstance(pipeline, str):
        return _json(400, msg="Bad request", error="job_name is required, a string")
    settings = request.app[SETTINGS]
    get_pipeline(settings, pipeline)  # UnknownPipeline (a 400) before any path is looked at
    priority = body.pop("priority", DEFAULT_PRIORITY)
    if not isinstance(priority, str):
        raise InvalidJobRequest(f"priority must be one of {', '.join(PRIORITIES)}")
    in_dir = await asyncio.to_thread(resolve_inside, settings, body.pop("in_dir", None), "in_dir")
    config = body.pop("config_dir", None)
    config_dir = None if config is None else await asyncio.to_thread(resolve_inside, settings, config, "config_dir")
    uid = uuid.uuid4().hex
    output = real_roots(settings.data_roots)[0] / RESULTS_DIR / uid
    await asyncio.to_thread(submit, request.app[CELERY], settings, pipeline, in_dir, output, config_dir,
                            body, job_id=uid, priority=priority, by=f"the HTTP API, from {request.remote}")
    log.info("job %s: %s on %s", uid, pipeline, in_dir)
    return _json(201, uid=uid)


def parse_json_object(raw: bytes, charset: str | None) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        InvalidJobRequest: an unknown charset, text that is not in it, JSON that does not
            parse (numbers too long, nesting too deep included), or anything but an object.
    """
    try:
        text = raw.decode(charset or "utf-8")
    except LookupError:
        raise InvalidJobRequest(f"unknown charset {charset!r}") from None
    except UnicodeDecodeError as e:
        raise InvalidJobRequest(f"the body is not valid {charset or 'utf-8'}: {e.reason} at byte {e.start}") from None
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; so is a 5,000-digit number
        raise InvalidJobRequest(f"malformed JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise InvalidJobRequest("the body must be a JSON object")
    return body


async def query_job(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    try:
        status = await asyncio.to_thread(request.app[JOBS].get, uid)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise BrokerUnavailable(str(e)) from e
    if status.state == DONE:
        output = Path(status.output)
        root = request.app[SETTINGS].data_root.resolve()
        shown = output.relative_to(root) if output.is_relative_to(root) else output
        # Results on their way to a DICOM destination (queues/dispatch.py): sent, pending or dead-lettered.
        return _json(200, msg="Job has completed", output_dir=str(shown),
                     **({"dispatch": status.dispatch} if status.dispatch else {}))
    if status.state == FAILED:
        return _json(500, msg="Job has failed", error=status.error, stage=status.stage)
    if status.state == CANCELLED:
        return _json(410, msg="Job was cancelled", error=status.error, stage=status.stage)
    return _json(202, msg="Job is running", state=status.state, stage=status.stage)


async def cancel_job(request: web.Request) -> web.Response:
    """``DELETE /job/<uid>``: ask for the job to be cancelled (ended by a worker, shortly)."""
    uid = request.match_info["uid"]
    status = await asyncio.to_thread(cancel, request.app[CELERY], request.app[SETTINGS], uid,
                                     f"the HTTP API, from {request.remote}")
    if status.finished:
        return _json(409 if status.state != CANCELLED else 200, msg=f"Job has already ended ({status.state})",
                     state=status.state)
    return _json(202, msg="Job is being cancelled", state=status.state)


STATUS_JOBS = 50  # the most recent jobs the status page lists


async def status_page(request: web.Request) -> web.Response:
    """An HTML table of the most recent jobs (refreshing itself every 5 s), for people."""
    try:
        rows = await asyncio.to_thread(request.app[JOBS].recent_statuses, STATUS_JOBS)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise BrokerUnavailable(str(e)) from e
    cells = []
    for status in rows:
        progress = f"{status.progress_done}/{status.progress_total}" if status.progress_total else ""
        values = (status.job_id, status.pipeline, status.state, status.stage, progress, status.priority,
                  status.error or status.output)
        cells.append("<tr class='%s'>%s</tr>" % (html.escape(status.state),
                                                 "".join(f"<td>{html.escape(str(v))}</td>" for v in values)))
    page = STATUS_PAGE.format(count=len(rows), rows="\n".join(cells) or "<tr><td colspan=7>no jobs yet</td></tr>")
    return web.Response(text=page, content_type="text/html")


STATUS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>Carina jobs</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{padding:.3em .8em;
border-bottom:1px solid #ddd;text-align:left}}.failed{{color:#b00}}.done{{color:#070}}</style></head>
<body><h1>Carina: the {count} most recent jobs</h1>
<table><tr><th>job</th><th>pipeline</th><th>state</th><th>stage</th><th>progress</th><th>priority</th>
<th>output or error</th></tr>
{rows}
</table></body></html>
"""


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(sorted(catalogue(request.app[SETTINGS]))))


async def list_pipelines(request: web.Request) -> web.Response:
    """Every pipeline's definition, with where it came from (``carina pipelines`` prints the same)."""
    return web.json_response([p.summary() for p in catalogue(request.app[SETTINGS]).values()])


def create_api(settings: Settings, celery_app: Celery, client: redis.Redis) -> web.Application:
    """The aiohttp application; ``client`` is the Redis connection for job records."""
    app = web.Application(middlewares=[errors_as_json, bearer_token], client_max_size=settings.api_max_body_bytes)
    app[SETTINGS] = settings
    app[CELERY] = celery_app
    app[JOBS] = JobStore(client, settings.namespace, settings.job_ttl_s)
    app.router.add_post("/job/", post_job)
    app.router.add_post("/job", post_job)
    app.router.add_get("/query/{uid}", query_job)
    app.router.add_delete("/job/{uid}", cancel_job)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/pipelines", list_pipelines)
    app.router.add_get("/status", status_page)
    return app


def run(settings: Settings, celery_app: Celery, host: str, port: int) -> None:
    """Serve until interrupted. Refuses to listen beyond loopback without a token."""
    check_listener("the API", host, settings.api_token, "CARINA_API_TOKEN")
    client = connect(settings, socket_connect_timeout=3, socket_timeout=10)
    web.run_app(create_api(settings, celery_app, client), host=host, port=port, print=None)


_ERROR = {"type": "object", "properties": {"msg": {"type": "string"}, "error": {"type": "string"}}}


def openapi_document(pipelines: list[str]) -> dict[str, Any]:
    """The API's OpenAPI description, with the names of the catalogue's ``pipelines``."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "Carina job API", "version": "1",
                 "description": "Submit imaging pipelines and follow them. Paths are relative to the data root."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {"Error": _ERROR}},
        "security": [{"bearer": []}],
        "paths": {
            "/job/": {"post": {
                "summary": "Queue a job",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["job_name", "in_dir"],
                    "properties": {"job_name": {"type": "string", "enum": pipelines},
                                   "in_dir": {"type": "string"}, "config_dir": {"type": "string"},
                                   "priority": {"type": "string", "enum": list(PRIORITIES), "default": DEFAULT_PRIORITY}},
                    "additionalProperties": True}}}},
                "responses": {
                    "201": {"description": "queued", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"uid": {"type": "string"}}}}}},
                    **{code: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                       for code, text in (("400", "malformed or unknown job"), ("401", "token missing or wrong"),
                                          ("403", "path outside the data root"), ("413", "body too large"),
                                          ("415", "not JSON"), ("503", "queue unreachable"))}}}},
            "/query/{uid}": {"get": {
                "summary": "A job's state",
                "parameters": [{"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "Job has completed (output_dir; dispatch, where its DICOM "
                                                   "results go to a destination: state, destination, files, "
                                                   "attempts, reason)"},
                    "202": {"description": "Job is running"},
                    "404": {"description": "unknown uid"},
                    "410": {"description": "Job was cancelled (error: by whom and when)"},
                    "500": {"description": "Job has failed (error, stage)"}}}},
            "/job/{uid}": {"delete": {
                "summary": "Cancel a job: queued stages are dropped, a running one stopped, its memory freed",
                "parameters": [{"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "202": {"description": "Job is being cancelled (GET /query/<uid> answers 410 once it is)"},
                    "200": {"description": "Job had already been cancelled"},
                    "404": {"description": "unknown uid"},
                    "409": {"description": "Job has already ended (done or failed)"}}}},
            "/pipelines": {"get": {
                "summary": "Every pipeline's definition: parameters, stages, and where it came from",
                "responses": {"200": {"description": "a list of definitions"}}}},
        },
    }
