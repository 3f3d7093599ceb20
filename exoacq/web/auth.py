"""Who may use the console: the operators file, logins, session cookies and bearer tokens.

The console binds loopback by default and then needs no login. On any other address it needs an
operators file (``exoacq web --operators FILE``), written by ``exoacq web-operators add NAME``:
TOML, mode 0600, one table per operator with

* ``password``: ``{scrypt = HEX, salt = HEX, n, r, p}``: :func:`hashlib.scrypt` of the password
  (read twice from the terminal, or once from stdin with ``--password-stdin``);
* ``token_sha256``: SHA-256 (hex) of a random token printed once (``--token``): for scripts, sent
  as ``Authorization: Bearer TOKEN``.

A login (``POST /login``) puts the operator's name in a signed session cookie (Starlette's
SessionMiddleware; its secret is kept in the console's data directory). The file is read again when
it changes, so ``web-operators add|remove`` takes effect without a restart (a removed operator's
session ends at the next request).

:class:`SameOrigin` refuses requests from other web sites (``cross_origin``, 403): a POST or a
WebSocket whose ``Origin`` is not this console's own address. Without logins (the console on
loopback) the ``Host`` must be a loopback name too (``bad_host``, 403), so that a web page cannot
reach the console by pointing its own host name at 127.0.0.1 (DNS rebinding).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exoacq.errors import ExoacqError
from exoacq.textfile import read_text_file

#: scrypt work factors (RFC 7914): N = 2**14, r = 8 use 16 MiB and ~50 ms per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_BYTES = 2 ** 14, 8, 1, 32
#: Seconds a failed login or a bad token waits before its answer (a guess per second, per connection).
FAILED_LOGIN_DELAY_S = 1.0
#: An operator's name: it becomes ``claimed_operator`` in the daemon's audit trail.
NAME_PATTERN = re.compile(r"\w[\w.@+-]{0,63}")
SESSION_SECRET_FILE = "session-secret"
SESSION_MAX_AGE_S = 12 * 3600

#: Paths anyone may open: the login page and the static files it needs.
PUBLIC_PREFIXES = ("/login", "/static/")


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ExoacqError(f"operator name {name!r}: 1 to 64 letters, digits or . @ + - _, starting with a letter "
                          "or digit", code="usage")
    return name


def hash_password(password: str) -> dict[str, Any]:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=SCRYPT_BYTES)
    return {"scrypt": digest.hex(), "salt": salt.hex(), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}


def password_matches(stored: dict[str, Any], password: str) -> bool:
    expected = bytes.fromhex(stored["scrypt"])
    digest = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(stored["salt"]), n=int(stored["n"]),
                            r=int(stored["r"]), p=int(stored["p"]), dklen=len(expected),
                            maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(digest, expected)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class OperatorsFile:
    """The operators file: ``{name: {"password": {...}, "token_sha256": HEX, "created": ISO}}``."""

    path: Path
    operators: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, missing_ok: bool = False) -> "OperatorsFile":
        """Read and check the file (mode 0600: nobody else may read the hashes); ExoacqError otherwise."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            text = read_text_file(path)
        except FileNotFoundError:
            if missing_ok:
                return cls(path)
            raise ExoacqError(f"operators file {path}: no such file (make it with `exoacq web-operators add "
                              f"NAME --file {path}`)", code="usage") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ExoacqError(f"operators file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})",
                              code="usage") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ExoacqError(f"operators file {path}: mode {stat.S_IMODE(mode):04o}, readable by others: "
                              f"chmod 600 {path}", code="usage")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ExoacqError(f"operators file {path}: not valid TOML ({exc})", code="usage") from None
        operators = data.get("operators", {})
        if not isinstance(operators, dict):
            raise ExoacqError(f"operators file {path}: [operators] must be a table of operators", code="usage")
        for name, entry in operators.items():
            problem = _entry_problem(entry)
            if problem or not NAME_PATTERN.fullmatch(name):
                raise ExoacqError(f"operators file {path}: operator {name!r}: {problem or 'not a valid name'}",
                                  code="usage")
        return cls(path, operators)

    def write(self) -> None:
        """Write the file with mode 0600 (a new file replaces the old one atomically)."""
        lines = ["# exoacq web console operators: `exoacq web-operators add|list|remove`. Keep private (mode 0600).",
                 ""]
        for name, entry in sorted(self.operators.items()):
            lines.append(f"[operators.{json.dumps(name)}]")
            for key, value in entry.items():
                if isinstance(value, dict):
                    inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                    lines.append(f"{key} = {{{inner}}}")
                else:
                    lines.append(f"{key} = {json.dumps(value)}")
            lines.append("")
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines))
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except OSError as exc:
            raise ExoacqError(f"cannot write {self.path}: {exc.strerror}", code="usage") from None

    def set_password(self, name: str, password: str) -> None:
        self.operators.setdefault(check_name(name), {})["password"] = hash_password(password)
        self._stamp(name)

    def new_token(self, name: str) -> str:
        """A new random token for ``name`` (replacing any earlier one); only its hash is kept."""
        token = secrets.token_urlsafe(32)
        self.operators.setdefault(check_name(name), {})["token_sha256"] = token_digest(token)
        self._stamp(name)
        return token

    def _stamp(self, name: str) -> None:
        from datetime import datetime, timezone
        self.operators[name]["changed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def remove(self, name: str) -> None:
        if self.operators.pop(name, None) is None:
            raise ExoacqError(f"no operator {name!r} in {self.path}", code="usage")

    def check_password(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s password, or ``name``'s token (for token-only operators)."""
        entry = self.operators.get(name)
        if entry is None:
            hash_password(password)  # the same time as a known name: names are not revealed by timing
            return False
        if "password" in entry and password_matches(entry["password"], password):
            return True
        return "token_sha256" in entry and hmac.compare_digest(entry["token_sha256"], token_digest(password))

    def operator_of_token(self, token: str) -> str | None:
        digest = token_digest(token)
        found = None
        for name, entry in self.operators.items():  # compare with all of them: constant time per file
            if "token_sha256" in entry and hmac.compare_digest(entry["token_sha256"], digest):
                found = name
        return found


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "must be a table"
    if "password" not in entry and "token_sha256" not in entry:
        return "has neither a password nor a token"
    password = entry.get("password")
    if password is not None and (not isinstance(password, dict)
                                 or not {"scrypt", "salt", "n", "r", "p"} <= set(password)):
        return "password: must be {scrypt, salt, n, r, p}"
    if "token_sha256" in entry and not re.fullmatch(r"[0-9a-f]{64}", str(entry["token_sha256"])):
        return "token_sha256: must be 64 hex digits"
    return None


class Auth:
    """The console's login: the operators file (re-read when it changes) and the cookie settings."""

    def __init__(self, operators_path: Path, *, https: bool):
        self.path = Path(operators_path)
        #: Cookies only over HTTPS (the console refuses a non-loopback address without TLS).
        self.https = https
        self._file = OperatorsFile.read(self.path)
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def operators(self) -> OperatorsFile:
        """The operators, read again if the file changed (a file that became unreadable: nobody)."""
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._file = OperatorsFile.read(self.path)
            except ExoacqError:
                self._file = OperatorsFile(self.path)
        return self._file

    def session_secret(self, data_dir: Path) -> str:
        """The secret that signs session cookies: made once, kept (mode 0600) in the data directory."""
        path = Path(data_dir) / SESSION_SECRET_FILE
        try:
            return path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secret)
        return secret


def bearer_token(headers: Any) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class LoginRequired:
    """ASGI middleware (inside SessionMiddleware): puts the operator in ``scope["state"]["operator"]``
    (from the session, or a bearer token); without one, pages redirect to /login, the API answers 401,
    a WebSocket is refused with 401."""

    def __init__(self, app: Any, auth: Auth):
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers
        operators = self.auth.operators()
        name = (scope.get("session") or {}).get("operator")
        if name is not None and name not in operators.operators:
            scope["session"].clear()  # removed from the file since the login
            name = None
        token = bearer_token(Headers(scope=scope))
        if name is None and token is not None:
            name = operators.operator_of_token(token)
            if name is None:
                await asyncio.sleep(FAILED_LOGIN_DELAY_S)
        scope.setdefault("state", {})["operator"] = name
        path = scope["path"]
        if name is not None or path == "/login" or path.startswith(PUBLIC_PREFIXES[1]):
            return await self.app(scope, receive, send)
        await self._refuse(scope, receive, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse, RedirectResponse
        from urllib.parse import quote
        body = {"ok": False, "error": {"code": "not_logged_in",
                                       "message": "log in first (or send Authorization: Bearer TOKEN)"}}
        if scope["type"] == "websocket":
            from starlette.websockets import WebSocket
            websocket = WebSocket(scope, receive, send)
            if "websocket.http.response" in scope.get("extensions", {}):
                await websocket.send_denial_response(JSONResponse(body, status_code=401))
            else:
                await websocket.close(code=4401, reason="not logged in")
            return
        if scope["path"].startswith("/api/"):
            response = JSONResponse(body, status_code=401)
        else:
            target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
            response = RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)
        await response(scope, receive, send)


class SameOrigin:
    """ASGI middleware: refuse cross-site POSTs and WebSockets, and (``loopback_only``) a Host header
    that is not a loopback name; see the module's description."""

    UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}

    def __init__(self, app: Any, loopback_only: bool):
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        from urllib.parse import urlsplit
        from starlette.datastructures import Headers
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        problem = None
        if self.loopback_only and not _is_loopback_name(urlsplit("//" + host).hostname or ""):
            problem = ("bad_host", f"Host {host!r}: this console answers only on loopback (localhost, 127.0.0.1)")
        elif scope["type"] == "websocket" or scope["method"] in self.UNSAFE:
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != host:
                problem = ("cross_origin", f"a request from {origin} (another site) is refused")
        if problem is None:
            return await self.app(scope, receive, send)
        body = {"ok": False, "error": {"code": problem[0], "message": problem[1]}}
        from starlette.responses import JSONResponse
        if scope["type"] == "websocket":
            from starlette.websockets import WebSocket
            websocket = WebSocket(scope, receive, send)
            if "websocket.http.response" in scope.get("extensions", {}):
                await websocket.send_denial_response(JSONResponse(body, status_code=403))
            else:
                await websocket.close(code=1008)
            return
        await JSONResponse(body, status_code=403)(scope, receive, send)


def _is_loopback_name(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
