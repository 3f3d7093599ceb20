"""The parameters of the console's POSTs: a JSON object, or an HTML form's fields made into the
daemon's JSON types, so that a form gets the same answers as the control socket.

A form's fields are text: those that read as finite numbers are sent as numbers (integers when
whole: ``captures`` = "5" is 5), "true"/"false" (and a checkbox's "on") as booleans, except the
fields that are always text (TEXT_FIELDS: a sample named "42" stays "42"); anything else is sent as
given, so that the daemon's own message names the bad value. Empty fields are left out (the
daemon's defaults apply). A ``sop`` file is read as UTF-8 text.
"""
from __future__ import annotations

import json
import math
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from exoacq.errors import ExoacqError

#: Parameter names the console sets itself; a form may not.
RESERVED = {"command", "operator", "timeout_s"}
#: Form fields that are always text.
TEXT_FIELDS = {"method", "instrument", "sample", "sop", "blank_run", "bead_check", "control", "run_id", "device",
               "setting", "reason", "comment"}
#: The largest JSON body or SOP file read (the daemon takes requests up to 1 MiB).
MAX_BODY_BYTES = 4 * 1024 * 1024


def bad_request(message: str) -> ExoacqError:
    return ExoacqError(message, code="bad_request")


def form_value(name: str, text: str) -> Any:
    """A form field's text as the daemon's JSON type: numbers and booleans, or the text as given."""
    if name in TEXT_FIELDS:
        return text
    lowered = text.strip().lower()
    if lowered in ("true", "on"):
        return True
    if lowered == "false":
        return False
    try:
        number = float(text)
    except ValueError:
        return text  # the daemon's message names the bad value
    if not math.isfinite(number):
        return text
    return int(number) if number.is_integer() and abs(number) < 2 ** 53 else number


async def request_params(request: Request) -> dict[str, Any]:
    """A POST's parameters: a JSON object, or form fields (see :func:`form_value`); empty fields are
    left out so that the daemon's defaults apply; a ``sop`` file is read as UTF-8 text."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json") or not content_type:
        params = await json_object(request, "the request must be a JSON object of parameters")
    else:
        params = {}
        form = await request.form()
        try:
            for name, value in form.multi_items():
                if name in params:
                    raise bad_request(f"{name}: given twice")
                if isinstance(value, UploadFile):
                    value = await _upload_text(name, value)
                elif isinstance(value, str):
                    value = None if not value.strip() else form_value(name, value)
                if value is not None:
                    params[name] = value
        finally:
            await form.close()
    reserved = sorted(RESERVED & set(params))
    if reserved:
        raise bad_request(f"{reserved[0]}: not a parameter the console passes on")
    return params


async def json_object(request: Request, what: str) -> dict[str, Any]:
    """The request's body as a JSON object (an empty body: {}), at most MAX_BODY_BYTES; ``what`` is the
    message when it is JSON but not an object."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ExoacqError(f"the request is {len(body)} bytes; at most {MAX_BODY_BYTES}", code="request_too_large")
    try:
        value = json.loads(body or b"{}")
    except ValueError as exc:
        raise ExoacqError(f"the request is not valid JSON ({exc})", code="bad_json") from None
    if not isinstance(value, dict):
        raise bad_request(what)
    return value


async def _upload_text(name: str, upload: UploadFile) -> str | None:
    if name != "sop":
        raise bad_request(f"{name}: a file is accepted only as the SOP (field sop)")
    data = await upload.read(MAX_BODY_BYTES + 1)
    if not data and not upload.filename:
        return None  # no file chosen
    if len(data) > MAX_BODY_BYTES:
        raise bad_request(f"sop: the file {upload.filename!r} is larger than {MAX_BODY_BYTES // 1024 // 1024} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"sop: the file {upload.filename!r} is not UTF-8 text (byte {exc.start}); save it "
                          "as UTF-8") from None


def query_int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{name} = {text!r}: must be a whole number") from None
    if not low <= value <= high:
        raise bad_request(f"{name} = {value}: must be from {low} to {high}")
    return value
