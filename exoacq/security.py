"""Who may talk to the daemon: loopback by default, CurveZMQ off this host, bounded requests.

* Every socket the daemon binds is checked at start (:func:`bound_sockets`,
  :func:`is_local`): an endpoint reachable from another host (``0.0.0.0``,
  ``*``, a LAN address, a name that is not loopback) needs CurveZMQ keys, or
  the daemon refuses to start with one line naming the socket.
* With keys, every ZeroMQ socket the daemon binds for clients is a CURVE
  server, and ZeroMQ's ZAP handler (:class:`zmq.auth.thread.ThreadAuthenticator`)
  lets in only the public keys in ``KEYS_DIR/authorized/NAME.key``; a request's
  ``User-Id`` is then the operator's NAME (:class:`DaemonSecurity`).
* Control requests are bounded (size, string length, nesting depth) and
  their parameters checked against the handler's signature before it runs;
  commands that act (preview, set, acquire...) are refused from an
  unauthenticated client while the daemon is reachable off this host.

Key files: :mod:`exoacq.keyfiles`.
"""
from __future__ import annotations

import inspect
import ipaddress
import json
import logging
import math
import socket as socketlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from exoacq.errors import ConfigError, ExoacqError, ProtocolError
from exoacq.keyfiles import KeysDir, default_keys_dir, fingerprint, read_key_file

log = logging.getLogger("exoacq.security")

#: Every control request up to this size gets a reply.
MAX_REQUEST_BYTES = 1024 * 1024
#: ZeroMQ closes the connection of a peer sending a larger frame (never read into memory);
#: between MAX_REQUEST_BYTES and this, the daemon replies request_too_large and counts it.
MAX_FRAME_BYTES = 4 * MAX_REQUEST_BYTES
#: Control messages queued per socket (ZeroMQ's RCVHWM): bounds the memory hostile clients can take.
CONTROL_RCVHWM = 64
MAX_DEPTH = 8
MAX_STRING_CHARS = 4096
MAX_ITEMS = 1000
#: Parameters allowed longer texts (command, parameter): characters.
LONG_STRINGS = {("acquire", "sop"): 256 * 1024}
#: Commands that only read; every other command acts (hardware, runs, the catalog) and is refused
#: from an unauthenticated client while the daemon is reachable off this host.
READ_ONLY_COMMANDS = frozenset({"ping", "status", "settings", "runs", "run", "bluesky", "run_files", "run_file"})
#: Numeric ranges of parameters the handler signature types do not bound: (command, parameter): (low, high).
RANGES = {("runs", "limit"): (1, 100_000), ("run", "version"): (1, 1_000_000),
          ("select_version", "version"): (1, 1_000_000), ("run_file", "offset"): (0, 2**63 - 1),
          ("run_file", "length"): (1, 1024 * 1024)}
LOCAL_CLIENT = {"user": "local", "authenticated": False, "key": None}


# -- where a socket can be reached from ----------------------------------------------------------
def is_local(endpoint: str) -> bool:
    """True when only this host can reach ``endpoint``: ipc://, inproc://, or tcp:// on a
    loopback address (127.0.0.0/8, ::1, a name that resolves only to those, the ``lo`` interface)."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rpartition(":")[0].rpartition(";")[2]  # "src;host:port" is for connect; bind has host:port
    host = host.strip("[]")
    if host in ("", "*"):
        return False
    if host == "lo":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socketlib.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False  # an interface name, or nothing known: assume reachable
    return bool(addresses) and all(ipaddress.ip_address(a.partition("%")[0]).is_loopback for a in addresses)


def as_seen_from(endpoint: str, control: str) -> str:
    """An endpoint the daemon reported (a wildcard bind shows as 127.0.0.1) as a client that reached its
    control socket at ``control`` connects to it: on another host, the loopback host becomes that host."""
    host = control.partition("://")[2].rpartition(":")[0]
    loopback = next((h for h in ("tcp://127.0.0.1:", "tcp://[::1]:") if endpoint.startswith(h)), None)
    if loopback is None or not control.startswith("tcp://") or is_local(control):
        return endpoint
    return f"tcp://{host}:{endpoint[len(loopback):]}"


def bound_sockets(config: Any) -> list[tuple[str, str, str]]:
    """(what, endpoint, the configuration key) of every socket the daemon binds from its configuration."""
    d = config.daemon
    found = [(f"{name} socket", getattr(d, name), f"--{name} or [daemon] {name}")
             for name in ("control", "results", "frames")]
    for name, instrument in config.instruments.items():
        tracking = getattr(instrument.options, "tracking", None)
        for part in ("frames", "features"):
            endpoint = getattr(tracking, part, None)
            if isinstance(endpoint, str):
                found.append((f"instrument {name} tracking {part} socket", endpoint,
                              f"[instruments.{name}.settings.tracking] {part}"))
    return found


# -- the client side --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the server's public key (z85), for every socket it connects."""

    public: bytes
    secret: bytes
    server: bytes

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE client (before it connects)."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server


def load_client_keys(key_file: Path | str | None, server_key_file: Path | str | None) -> ClientKeys | None:
    """The keys of ``--key`` and ``--server-key`` (both or neither); None without keys."""
    if not key_file and not server_key_file:
        return None
    if not key_file or not server_key_file:
        raise ExoacqError("CurveZMQ needs both --key (your NAME.key_secret) and --server-key (the daemon's "
                          "server.key), or EXOACQ_KEY and EXOACQ_SERVER_KEY", code="usage")
    public, secret = read_key_file(key_file, "--key", secret=True)
    server, _ = read_key_file(server_key_file, "--server-key")
    return ClientKeys(public, secret, server)


def handshake_problem(monitor: zmq.Socket) -> str | None:
    """Why a client's CURVE/NULL handshakes failed, from its monitor socket's events (None: none failed)."""
    from zmq.utils.monitor import recv_monitor_message
    problem = None
    while monitor.poll(0):
        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            problem = "the daemon refused this client's key: it is not authorised there (`exoacq keys add NAME`)"
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            problem = problem or ("the security handshake failed: the daemon uses CurveZMQ keys and this client "
                                  "none (--key, --server-key), or the other way round, or --server-key is not "
                                  "the daemon's")
    return problem


# -- the daemon side --------------------------------------------------------------------------------
class _NamedAuthenticator(ThreadAuthenticator):
    """ZAP handler whose User-Id is the operator's name (the key file's name), not the raw key."""

    def __init__(self, context: zmq.Context, names: dict[bytes, str]):
        super().__init__(context, log=logging.getLogger("exoacq.security.zap"))
        self.names = names

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.names.get(z85.encode(client_public_key), "?")


@dataclass
class _KeyCheck:
    """The ZAP credentials callback: an authorised key in, anything else out (logged and counted)."""

    names: dict[bytes, str]
    refused: int = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.names:
            return True
        self.refused += 1
        log.warning("refused a client with an unknown CurveZMQ key (fingerprint %s)", fingerprint(key))
        return False


@dataclass
class DaemonSecurity:
    """The daemon's side: endpoint check at start, CURVE on its sockets, request checks, counters."""

    curve: bool = False
    #: The sockets reachable off this host ("results socket tcp://0.0.0.0:5556").
    off_host: list[str] = field(default_factory=list)
    keys_dir: Path | None = None
    server_public: bytes | None = None
    server_secret: bytes | None = None
    clients: dict[bytes, str] = field(default_factory=dict)
    oversize: int = 0
    refused_commands: int = 0
    _auth: _NamedAuthenticator | None = None
    _check: _KeyCheck | None = None

    @classmethod
    def from_config(cls, config: Any) -> "DaemonSecurity":
        """Check every bound endpoint; load the keys when one is reachable off this host.
        A ConfigError names the socket when keys are needed and missing."""
        keys = KeysDir(resolved_keys_dir(config))
        off_host = [(what, endpoint, key) for what, endpoint, key in bound_sockets(config) if not is_local(endpoint)]
        if not off_host:
            return cls()
        what, endpoint, _ = off_host[0]
        need = (f"the {what} {endpoint} is reachable off this host: CurveZMQ keys are required "
                f"(exoacq keys init; exoacq keys add NAME; [daemon] keys_dir or --keys-dir, now {keys.path})")
        if not keys.server_secret.exists():
            raise ConfigError(f"{need}: there is no {keys.server_secret}")
        if keys.server_secret.stat().st_mode & 0o077:
            raise ConfigError(f"{keys.server_secret}: others may read the daemon's secret key: "
                              f"chmod 600 {keys.server_secret} (and make a new pair if it may have leaked)")
        if keys.authorized.exists() and keys.authorized.stat().st_mode & 0o022:
            raise ConfigError(f"{keys.authorized}: others may add keys to it: chmod go-w {keys.authorized}")
        public, secret = read_key_file(keys.server_secret, "server key", secret=True)
        clients = {key: name for name, key in keys.clients().items()}
        if not clients:
            raise ConfigError(f"{need}: no client is authorised in {keys.authorized}")
        return cls(curve=True, off_host=[f"{w} {e}" for w, e, _ in off_host], keys_dir=keys.path,
                   server_public=public, server_secret=secret, clients=clients)

    @classmethod
    def for_process(cls, keys_dir: Path | str) -> "DaemonSecurity":
        """The same keys in a tracking process the daemon started (``--keys-dir``): its servers
        let in the same clients, and it connects to the daemon's with the daemon's own pair."""
        keys = KeysDir(Path(keys_dir))
        public, secret = read_key_file(keys.server_secret, "server key", secret=True)
        return cls(curve=True, keys_dir=keys.path, server_public=public, server_secret=secret,
                   clients={key: name for name, key in keys.clients().items()})

    def process_args(self) -> list[str]:
        """Command-line arguments for the tracking processes the daemon starts."""
        return ["--keys-dir", str(self.keys_dir)] if self.curve else []

    def internal_keys(self) -> ClientKeys | None:
        """The daemon's own pair as a client of its tracking processes' sockets (None without keys)."""
        if not self.curve:
            return None
        return ClientKeys(self.server_public, self.server_secret, self.server_public)

    def start(self, context: zmq.Context) -> None:
        """Start ZeroMQ's ZAP handler on the daemon's context (before any CURVE socket binds).
        It lets in the authorised clients and the daemon's own key (its tracking processes, as "daemon")."""
        if not self.curve:
            return
        names = {**self.clients, self.server_public: "daemon"}
        self._check = _KeyCheck(names)
        self._auth = _NamedAuthenticator(context, names)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self._check)
        if self.off_host:
            log.info("CurveZMQ on: %s reachable off this host; %d client key(s) authorised (%s)",
                     ", ".join(self.off_host), len(self.clients), ", ".join(sorted(self.clients.values())))

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def prepare(self, socket: zmq.Socket, what: str) -> None:
        """Options of a socket the daemon binds for clients (before it binds): CURVE server when keys are
        on; the control socket's frame size limit and queue."""
        if what == "control":
            socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
            socket.setsockopt(zmq.RCVHWM, CONTROL_RCVHWM)
        if self.curve:
            socket.curve_server = True
            socket.curve_secretkey = self.server_secret
            socket.curve_publickey = self.server_public

    def client_of(self, parts: list[Any]) -> dict[str, Any]:
        """Who sent a control message: the ZAP User-Id of its last frame (copy=False frames), else local."""
        last = parts[-1] if parts else None
        if not self.curve or not isinstance(last, zmq.Frame):
            return dict(LOCAL_CLIENT)
        try:
            user = last.get("User-Id")
        except zmq.ZMQError:  # inproc: no security handshake
            return dict(LOCAL_CLIENT)
        names = {**self.clients, self.server_public: "daemon"}
        key = next((k for k, n in names.items() if n == user), None)
        if not user or key is None:
            return dict(LOCAL_CLIENT)
        return {"user": user, "authenticated": True, "key": key.decode("ascii")}

    def describe(self) -> dict[str, Any]:
        """For the status reply."""
        return {"curve": self.curve, "off_host": self.off_host,
                "authorized_clients": sorted(self.clients.values()),
                "max_request_bytes": MAX_REQUEST_BYTES, "oversize_requests": self.oversize,
                "refused_keys": self._check.refused if self._check else 0,
                "refused_commands": self.refused_commands}

    # -- control requests ------------------------------------------------------------------
    def parse(self, parts: list[bytes]) -> dict[str, Any]:
        """A control message's request: size first (counted), then strict JSON, bounded."""
        if sum(len(p) for p in parts) > MAX_REQUEST_BYTES + 64 * 1024 or len(parts[-1]) > MAX_REQUEST_BYTES:
            self.oversize += 1
            raise ProtocolError(f"the request is {len(parts[-1])} bytes: at most {MAX_REQUEST_BYTES} "
                                "(1 MiB)", code="request_too_large")
        try:
            request = json.loads(parts[-1].decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
        except RecursionError:
            raise ProtocolError(f"the request is nested too deeply (at most {MAX_DEPTH} levels)",
                                code="bad_request") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"the request is not valid JSON ({exc})", code="bad_json") from None
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            raise ProtocolError('a request is a JSON object with a "command" string', code="bad_request")
        if len(request["command"]) > 64:
            raise ProtocolError(f"command: a name of {len(request['command'])} characters; at most 64",
                                code="unknown_command")
        _check_bounds(request, "request", 1, MAX_STRING_CHARS, request["command"])
        return request

    def check_params(self, command: str, handler: Any, params: dict[str, Any]) -> None:
        """The parameters against the handler's signature: names, JSON types, ranges."""
        if "self" in params:  # bound methods take it already; a **params handler would get it twice
            raise ProtocolError(f"bad parameters for {command!r}: no parameter is named 'self'")
        try:
            inspect.signature(handler).bind(**params)
        except TypeError as exc:
            raise ProtocolError(f"bad parameters for {command!r}: {exc}") from None
        try:
            hints = typing.get_type_hints(handler)
        except Exception:  # an annotation this module cannot evaluate: the handler checks its values
            hints = {}
        for name, value in params.items():
            hint = hints.get(name)
            if hint is not None and not _matches(value, hint):
                raise ProtocolError(f"{name} = {_short(value)}: must be {_describe(hint)}")
            low, high = RANGES.get((command, name), (None, None))
            if low is not None and isinstance(value, (int, float)) and not low <= value <= high:
                raise ProtocolError(f"{name} = {value!r}: must be from {low} to {high}", code="out_of_range")

    def authorize(self, command: str, client: dict[str, Any]) -> None:
        """Acting commands need an authenticated client while the daemon is reachable off this host;
        they are logged with the client's identity."""
        if command in READ_ONLY_COMMANDS:
            return
        if self.curve and not client["authenticated"]:
            self.refused_commands += 1
            log.warning("control: %s refused: the client is not authenticated and the daemon is reachable "
                        "off this host", command)
            raise ExoacqError(f"{command!r} needs an authenticated client: this daemon is reachable off its "
                              "host (connect with --key and --server-key)", code="not_authorized")
        log.info("control: %s from %s%s", command, client["user"],
                 f" (key {fingerprint(client['key'])})" if client.get("key") else "")


def resolved_keys_dir(config: Any) -> Path:
    keys_dir = getattr(config.daemon, "keys_dir", None)
    return Path(keys_dir) if keys_dir else default_keys_dir()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range for a number")
    return value


def _check_bounds(value: Any, where: str, depth: int, max_chars: int, command: str) -> None:
    """Nesting depth, container sizes and string lengths of a parsed request."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)")
    if isinstance(value, str):
        if len(value) > max_chars:
            raise ProtocolError(f"{where}: a text of {len(value)} characters; at most {max_chars}")
        _check_text(value, where)
    if isinstance(value, (dict, list)) and len(value) > MAX_ITEMS:
        raise ProtocolError(f"{where}: {len(value)} items; at most {MAX_ITEMS}")
    if isinstance(value, dict):
        for key, item in value.items():
            if len(key) > 64:
                raise ProtocolError(f"{where}: a key of {len(key)} characters; at most 64")
            _check_text(key, f"{where} key")
            limit = LONG_STRINGS.get((command, key), MAX_STRING_CHARS) if depth == 1 else MAX_STRING_CHARS
            _check_bounds(item, key if depth == 1 else f"{where}.{key}", depth + 1, limit, command)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_bounds(item, f"{where}[{i}]", depth + 1, MAX_STRING_CHARS, command)


def _check_text(text: str, where: str) -> None:
    """JSON may carry lone UTF-16 surrogates (``"\\ud800"``), which no file, catalog or reply can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{where}: a text with an unpaired surrogate (\\ud800-\\udfff) is not valid "
                            "Unicode") from None


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type a handler's annotation names (unknown types: left to the handler)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if (origin or hint) in (dict, list):
        return isinstance(value, origin or hint)
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Union or type(hint).__name__ == "UnionType":
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    names = {type(None): "null", bool: "true or false", int: "a whole number", float: "a number",
             str: "a string", dict: "an object", list: "a list"}
    return names.get(typing.get_origin(hint) or hint, str(hint))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
