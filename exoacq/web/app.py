"""The console's ASGI application (Starlette): a JSON API, two WebSockets and the pages.

It is only a client of the daemon: every answer comes from :class:`exoacq.web.bridge.DaemonBridge`
(``request`` runs in a worker thread, never on the event loop). The API answers
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"code", "message"}}`` with the daemon's
own code and message, verbatim, and an HTTP status: 400 for a bad request, 401 not logged in,
403 refused by the daemon (``not_authorized``), 404 an unknown run, version, file or route, 502 no
daemon answering, 500 a bug (``internal_error``; logged, never a traceback to the client).
The routes are listed in :func:`create_app`.

Requests from other web sites are refused (exoacq.web.auth.SameOrigin); form fields become the
daemon's JSON types as exoacq.web.forms describes; the WebSockets are in exoacq.web.sockets.

Every request to the daemon states the operator: the logged-in operator's name, else the one given
to :func:`create_app`. The daemon records it as ``claimed_operator``; the identity it trusts is the
console's own CurveZMQ key (its ``operator`` in the audit trail).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse,
                                 Response, StreamingResponse)
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.websockets import WebSocket

from exoacq.errors import ExoacqError
from exoacq.storage import FINAL_STATES
from exoacq.web.forms import bad_request, json_object, query_int, request_params
from exoacq.web.sockets import events_socket, live_socket

log = logging.getLogger("exoacq.web")

HERE = Path(__file__).parent
#: HTTP status of an error code (any other code: 400, a request the daemon or the console refused).
ERROR_STATUS = {"not_logged_in": 401, "not_authorized": 403, "unknown_run": 404, "unknown_file": 404,
                "unknown_version": 404, "not_found": 404, "request_too_large": 413, "internal_error": 500,
                "no_daemon": 502}
#: Runs scanned when /api/runs filters (the daemon's newest first).
RUNS_SCAN_LIMIT = 1000
#: At most this many runs' records are fetched per /api/runs request for their headline numbers.
HEADLINES_PER_REQUEST = 50
#: A cached headline is fetched again after this long (a version picked with another client).
HEADLINE_TTL_S = 300.0
MAX_IMAGE_BYTES = 20 * 1024 * 1024


def ok(result: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse({"ok": True, "result": result}, status_code=status_code)


def error_response(code: str, message: str, api: bool = True) -> Response:
    status = ERROR_STATUS.get(code, 400)
    if api:
        return JSONResponse({"ok": False, "error": {"code": code, "message": message}}, status_code=status)
    return PlainTextResponse(f"{code}: {message}\n", status_code=status)


class HeadlineCache:
    """Headline numbers of finished runs, keyed by run id, state and finish time; forgotten when the
    run gets a new result version (``run.version``) or after HEADLINE_TTL_S."""

    def __init__(self, size: int = 2000):
        self.size = size
        self._entries: OrderedDict[str, tuple[tuple, float, dict]] = OrderedDict()

    def get(self, run_id: str, key: tuple) -> dict | None:
        entry = self._entries.get(run_id)
        if entry is None or entry[0] != key or time.monotonic() - entry[1] > HEADLINE_TTL_S:
            return None
        self._entries.move_to_end(run_id)
        return entry[2]

    def put(self, run_id: str, key: tuple, headline: dict) -> None:
        self._entries[run_id] = (key, time.monotonic(), headline)
        self._entries.move_to_end(run_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, run_id: str | None) -> None:
        self._entries.pop(run_id, None)

    def clear(self) -> None:
        self._entries.clear()


def _headline(record: dict) -> dict:
    from exoacq.web.summaries import headline
    return headline(record)


def _content_disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1] or "file"
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


class Console:
    """The routes and what they share: the bridge, templates, the sample store, the headline cache."""

    def __init__(self, bridge: Any, data_dir: Path, auth: Any, operator: str | None):
        self.bridge = bridge
        self.data_dir = Path(data_dir)
        self.auth = auth
        self.operator = operator
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.headlines = HeadlineCache()
        self._samples = None

    # -- WebSockets (exoacq.web.sockets) ------------------------------------------------------------
    async def ws_events(self, websocket: WebSocket) -> None:
        await events_socket(websocket, self.bridge)

    async def ws_live(self, websocket: WebSocket) -> None:
        await live_socket(websocket, self.bridge, lambda command, **params: self.ask(websocket, command, **params))

    # -- helpers ---------------------------------------------------------------------------------
    def operator_of(self, connection: Request | WebSocket) -> str | None:
        return connection.scope.get("state", {}).get("operator") or self.operator

    async def ask(self, connection: Request | WebSocket, command: str, **params: Any) -> Any:
        """One daemon request, in a worker thread, stating the operator; ExoacqError on an error reply."""
        return await run_in_threadpool(self.bridge.request, command, operator=self.operator_of(connection), **params)

    @property
    def samples(self) -> Any:
        if self._samples is None:
            from exoacq.web.samples import SampleStore
            self._samples = SampleStore(self.data_dir)
        return self._samples

    def page(self, name: str, request: Request, status_code: int = 200, **extra: Any) -> Response:
        context = {"operator": self.operator_of(request), "login_required": self.auth is not None,
                   "page": name.removesuffix(".html"), **extra}
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    async def forget_reprocessed(self) -> None:
        """Background task: a run with a new result version gets its headline fetched again."""
        subscription = self.bridge.events()
        dropped = 0
        try:
            while True:
                topic, doc = await subscription.get()
                if subscription.dropped != dropped:
                    dropped = subscription.dropped
                    self.headlines.clear()
                if topic == "run.version":
                    self.headlines.forget(doc.get("run_id"))
        finally:
            subscription.close()

    # -- JSON API ------------------------------------------------------------------------------------
    async def api_status(self, request: Request) -> Response:
        return ok(await self.ask(request, "status"))

    async def api_me(self, request: Request) -> Response:
        return ok({"operator": self.operator_of(request), "login_required": self.auth is not None})

    async def api_runs(self, request: Request) -> Response:
        limit = query_int(request, "limit", 100, 1, 100000)
        sample = request.query_params.get("sample", "").strip().lower()
        method = request.query_params.get("method", "").strip()
        states = {s.strip() for s in request.query_params.get("state", "").split(",") if s.strip()}
        filtered = bool(sample or method or states)
        runs = await self.ask(request, "runs", limit=max(limit, RUNS_SCAN_LIMIT) if filtered else limit)
        chosen = [run for run in runs
                  if (not sample or sample in (run.get("sample") or "").lower())
                  and (not method or run.get("method") == method)
                  and (not states or run.get("state") in states)][:limit]
        fetched = 0
        for run in chosen:
            run["headline"] = None
            if run.get("state") not in FINAL_STATES:
                continue
            key = (run["state"], run.get("finished"))
            run["headline"] = self.headlines.get(run["run_id"], key)
            if run["headline"] is None and fetched < HEADLINES_PER_REQUEST:
                fetched += 1
                try:
                    record = await self.ask(request, "run", run_id=run["run_id"])
                except ExoacqError as exc:
                    if exc.code == "no_daemon":
                        raise
                    continue
                run["headline"] = _headline(record)
                self.headlines.put(run["run_id"], key, run["headline"])
        return ok(chosen)

    async def api_run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        version = query_int(request, "version", None, 1, 2 ** 31)
        params = {} if version is None else {"version": version}
        record = await self.ask(request, "run", run_id=run_id, **params)
        record["headline"] = _headline(record)
        record["files"] = await self.ask(request, "run_files", run_id=run_id)
        return ok(record)

    async def api_run_file(self, request: Request) -> Response:
        """A run's file, streamed in the daemon's chunks (``run_file``), as an attachment."""
        import base64
        run_id, path = request.path_params["run_id"], request.path_params["path"]
        first = await self.ask(request, "run_file", run_id=run_id, path=path, offset=0)
        size = first["bytes"]

        async def chunks():
            reply = first
            offset = 0
            while True:
                data = base64.b64decode(reply["data"])
                data = data[:max(0, size - offset)]  # the size announced: a file still growing stops there
                if data:
                    yield data
                offset += len(data)
                if reply["eof"] or offset >= size or not data:
                    return
                try:
                    reply = await self.ask(request, "run_file", run_id=run_id, path=path, offset=offset)
                except ExoacqError as exc:  # headers are sent: the download ends short (the client sees it)
                    log.warning("download of %s/%s stopped at %d of %d bytes: %s", run_id, path, offset, size, exc)
                    return

        media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        headers = {"Content-Disposition": _content_disposition(first.get("path") or path),
                   "Content-Length": str(size), "X-Content-Type-Options": "nosniff"}
        return StreamingResponse(chunks(), media_type=media_type, headers=headers)

    async def api_acquire(self, request: Request) -> Response:
        return ok(await self.ask(request, "acquire", **await request_params(request)))

    async def api_stop(self, request: Request) -> Response:
        return ok(await self.ask(request, "stop", **await request_params(request)))

    async def api_preview(self, request: Request) -> Response:
        return ok(await self.ask(request, "preview", **await request_params(request)))

    async def api_set(self, request: Request) -> Response:
        return ok(await self.ask(request, "set", **await request_params(request)))

    async def api_settings(self, request: Request) -> Response:
        instrument = request.query_params.get("instrument", "").strip()
        return ok(await self.ask(request, "settings", **({"instrument": instrument} if instrument else {})))

    async def api_samples(self, request: Request) -> Response:
        runs = await self.ask(request, "runs", limit=RUNS_SCAN_LIMIT)
        samples: dict[str, dict[str, Any]] = {}
        for run in runs:  # newest first: the first run seen of a sample is its last
            entry = samples.setdefault(run["sample"], {"sample": run["sample"], "runs": 0, "methods": [],
                                                       "last": run.get("created")})
            entry["runs"] += 1
            if run["method"] not in entry["methods"]:
                entry["methods"].append(run["method"])
        return ok(list(samples.values()))

    async def api_sample_info(self, request: Request) -> Response:
        sample = request.path_params["sample"]
        if request.method == "PUT":
            info = await json_object(request, "the sample's information must be a JSON object")
            return ok(await run_in_threadpool(self.samples.put, sample, info, operator=self.operator_of(request)))
        return ok(await run_in_threadpool(self.samples.get, sample))

    async def api_sample_image(self, request: Request) -> Response:
        sample = request.path_params["sample"]
        form = await request.form(max_files=1)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise bad_request("file: choose an image file (PNG, JPEG or TIFF)")
            data = await upload.read(MAX_IMAGE_BYTES + 1)
            if len(data) > MAX_IMAGE_BYTES:
                raise bad_request(f"file: {upload.filename!r} is larger than {MAX_IMAGE_BYTES // 1024 // 1024} MB")
            name = await run_in_threadpool(self.samples.add_image, sample, upload.filename or "image", data,
                                           operator=self.operator_of(request))
        finally:
            await form.close()
        return ok({"name": name})

    async def api_sample_image_file(self, request: Request) -> Response:
        path = await run_in_threadpool(self.samples.image_path, request.path_params["sample"],
                                       request.path_params["name"])
        return FileResponse(path, headers={"X-Content-Type-Options": "nosniff"})

    # -- pages ---------------------------------------------------------------------------------------
    async def page_home(self, request: Request) -> Response:
        return self.page("home.html", request)

    async def page_live(self, request: Request) -> Response:
        return self.page("live.html", request, instrument=request.path_params["instrument"])

    async def page_acquire(self, request: Request) -> Response:
        return self.page("acquire.html", request)

    async def page_runs(self, request: Request) -> Response:
        return self.page("runs.html", request)

    async def page_run(self, request: Request) -> Response:
        return self.page("run.html", request, run_id=request.path_params["run_id"])

    async def page_samples(self, request: Request) -> Response:
        return self.page("samples.html", request)

    async def page_report(self, request: Request) -> Response:
        """The printable cross-method report of a sample, from the runs chosen (default: all of its
        finished runs)."""
        from exoacq.web.report import sample_report
        sample = request.path_params["sample"]
        run_ids = [r.strip() for r in request.query_params.get("runs", "").split(",") if r.strip()]
        if not run_ids:
            listed = await self.ask(request, "runs", limit=RUNS_SCAN_LIMIT)
            run_ids = [r["run_id"] for r in listed if r["sample"] == sample and r["state"] in FINAL_STATES]
        runs = []
        for run_id in run_ids:
            record = await self.ask(request, "run", run_id=run_id)
            if record.get("sample") != sample:
                raise bad_request(f"run {run_id} is of sample {record.get('sample')!r}, not {sample!r}")
            runs.append(record)
        info = await run_in_threadpool(self.samples.get, sample)
        images = await run_in_threadpool(self.samples.images, sample)
        html = await run_in_threadpool(sample_report, sample, runs, info, images=images)
        return HTMLResponse(html)

    async def login(self, request: Request) -> Response:
        """The login page; its form (name, password or token, next) sets the session cookie."""
        form = await request.form() if request.method == "POST" else {}
        target = str(form.get("next") or request.query_params.get("next") or "/")
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"  # only this console's own pages
        if self.auth is None:
            return RedirectResponse(target, status_code=303)
        if request.method == "GET":
            return self.page("login.html", request, error=None, next=target)
        name, password = str(form.get("name") or "").strip(), str(form.get("password") or "")
        operators = self.auth.operators()
        if name and password and await run_in_threadpool(operators.check_password, name, password):
            request.session.clear()
            request.session["operator"] = name
            return RedirectResponse(target, status_code=303)
        from exoacq.web.auth import FAILED_LOGIN_DELAY_S
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)
        log.warning("failed login as %r from %s", name, request.client.host if request.client else "?")
        return self.page("login.html", request, status_code=401, error="unknown operator or wrong password",
                         next=target)

    async def logout(self, request: Request) -> Response:
        if "session" in request.scope:
            request.session.clear()
        return RedirectResponse("/login" if self.auth is not None else "/", status_code=303)

# -- errors --------------------------------------------------------------------------------------------
def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _on_exoacq_error(request: Request, exc: ExoacqError) -> Response:
    return error_response(exc.code, str(exc), api=_is_api(request))


async def _on_http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    response = error_response(code, str(exc.detail), api=_is_api(request))
    response.status_code = exc.status_code
    return response


class CatchBugs:
    """ASGI middleware, outermost: an unexpected exception (a bug) is logged in one line (with its
    traceback when ``EXOACQ_DEBUG=1``) and answered 500 ``internal_error``; never a traceback."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):  # the lifespan: uvicorn reports its failures
            return await self.app(scope, receive, send)
        started = False

        async def watched_send(message: dict) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as exc:
            where = f"{scope.get('method', 'WebSocket')} {scope.get('path')}"
            log.error("%s: %s: %s (a bug; EXOACQ_DEBUG=1 logs the traceback)", where, type(exc).__name__,
                      " ".join(str(exc).split()), exc_info=os.environ.get("EXOACQ_DEBUG", "") not in ("", "0"))
            if started or scope["type"] != "http":
                return  # the answer has begun (or a WebSocket: the server closes it)
            response = error_response("internal_error", f"the console failed ({type(exc).__name__}): see its log",
                                      api=scope["path"].startswith("/api/"))
            await response(scope, receive, send)


def create_app(bridge: Any, *, data_dir: Path, auth: Any = None, operator: str | None = None) -> Starlette:
    """The console on ``bridge`` (started by the caller); ``auth``: an :class:`exoacq.web.auth.Auth`
    (login required), or None (no login: the console is on loopback); ``operator``: the name stated
    to the daemon when nobody is logged in."""
    console = Console(bridge, data_dir, auth, operator)
    c = console
    routes = [
        Route("/api/status", c.api_status), Route("/api/me", c.api_me), Route("/api/runs", c.api_runs),
        Route("/api/runs/{run_id}", c.api_run), Route("/api/runs/{run_id}/files/{path:path}", c.api_run_file),
        Route("/api/acquire", c.api_acquire, methods=["POST"]), Route("/api/stop", c.api_stop, methods=["POST"]),
        Route("/api/preview", c.api_preview, methods=["POST"]), Route("/api/set", c.api_set, methods=["POST"]),
        Route("/api/settings", c.api_settings), Route("/api/samples", c.api_samples),
        Route("/api/samples/{sample:path}/info", c.api_sample_info, methods=["GET", "PUT"]),
        Route("/api/samples/{sample:path}/images", c.api_sample_image, methods=["POST"]),
        Route("/api/samples/{sample:path}/images/{name}", c.api_sample_image_file),
        WebSocketRoute("/ws/events", c.ws_events), WebSocketRoute("/ws/live/{instrument}", c.ws_live),
        Route("/", c.page_home), Route("/live/{instrument}", c.page_live), Route("/acquire", c.page_acquire),
        Route("/runs", c.page_runs), Route("/runs/{run_id}", c.page_run), Route("/samples", c.page_samples),
        Route("/samples/{sample:path}/report", c.page_report),
        Route("/login", c.login, methods=["GET", "POST"]), Route("/logout", c.logout, methods=["POST"]),
        Route("/favicon.ico", lambda request: Response(status_code=204)),  # no icon (pages without a <link>)
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    from exoacq.web.auth import SameOrigin
    middleware = [Middleware(CatchBugs), Middleware(SameOrigin, loopback_only=auth is None)]
    if auth is not None:
        from starlette.middleware.sessions import SessionMiddleware
        from exoacq.web.auth import SESSION_MAX_AGE_S, LoginRequired
        middleware += [Middleware(SessionMiddleware, secret_key=auth.session_secret(data_dir),
                                 session_cookie="exoacq_session", max_age=SESSION_MAX_AGE_S, same_site="strict",
                                 https_only=auth.https),
                      Middleware(LoginRequired, auth=auth)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        task = asyncio.ensure_future(console.forget_reprocessed())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={ExoacqError: _on_exoacq_error, HTTPException: _on_http_error})
