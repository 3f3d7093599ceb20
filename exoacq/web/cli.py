"""``exoacq web`` (the operator's console in the browser) and ``exoacq web-operators add|list|remove``.

The console is a separate process and only a client of the daemon's bus, so it can run on another
machine and can never slow an acquisition. It binds loopback by default; any other address needs an
operators file (logins) and TLS (``--tls-cert``, ``--tls-key``), as the daemon needs CurveZMQ keys for
a socket reachable off its host. Starlette and uvicorn are imported only when the console starts.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from exoacq.cli_common import add_control, default_control
from exoacq.errors import ExoacqError

DEFAULT_LISTEN = "127.0.0.1:8080"
#: The console runs at a lower CPU priority than the daemon: on a 2-core instrument PC it then never takes
#: the time the camera and the tracking core need (measured with `exoacq bench realtime --console`).
CONSOLE_NICE = 19


def add_web_verbs(sub: Any, parser_class: type) -> None:
    """The ``web`` and ``web-operators`` verbs, on the top-level sub-parsers."""
    p = add_control(sub.add_parser(
        "web", help="the operator's console in the browser (live view, acquisitions, results, sample reports)"))
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help="address to serve on (default %(default)s; another than loopback needs --operators, "
                        "--tls-cert and --tls-key; port 0: any free port)")
    p.add_argument("--operators", type=Path, metavar="FILE",
                   help="operators file (`exoacq web-operators add`): a login is required")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="TLS certificate (PEM): serve HTTPS")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    p.add_argument("--data-dir", type=Path, help="the console's own files: session secret, samples' outside "
                                                 "results and images (default: the user data folder "
                                                 "exoacq-web)")
    p.add_argument("--operator", help="the operator stated to the daemon when nobody is logged in (default: "
                                      "$EXOACQ_OPERATOR, else the login name)")
    p.add_argument("--nice", type=int, default=CONSOLE_NICE, metavar="N",
                   help="lower the console's CPU priority by N (0-19, default %(default)s), so that on the "
                        "instrument's own computer it yields to the daemon's acquisition")
    p.add_argument("--simulated", action="store_true",
                   help="also start `exoacq daemon --simulated` (its own process, on free loopback ports, its "
                        "runs in DATA_DIR/simulated-daemon) and serve the console on it; both stop together")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("web-operators", help="who may log in to the console (`exoacq web --operators FILE`)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=parser_class)
    q = actions.add_parser("add", help="add an operator, or give one a new password (or token)")
    q.add_argument("name")
    q.add_argument("--token", action="store_true",
                   help="a random token (printed once; sent as `Authorization: Bearer TOKEN`) instead of a password")
    q.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    _file_option(q)
    q = actions.add_parser("remove", help="remove an operator (their sessions end)")
    q.add_argument("name")
    _file_option(q)
    q = actions.add_parser("list", help="the operators and what they log in with")
    _file_option(q)
    p.set_defaults(func=cmd_web_operators)


def _file_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", type=Path, default=None,
                   help="the operators file (default: operators.toml in the console's data folder)")


def default_data_dir() -> Path:
    import platformdirs
    return Path(platformdirs.user_data_dir("exoacq-web"))


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ExoacqError(f"--listen {text}: must be HOST:PORT, e.g. {DEFAULT_LISTEN}", code="usage")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ExoacqError(f"--listen {text}: the port must be a number from 0 to 65535", code="usage")
    return host, port


def _readable(path: Path | None, option: str) -> Path | None:
    if path is not None and not path.is_file():
        raise ExoacqError(f"{option} {path}: no such file", code="usage")
    return path


def check_tls(cert: Path | None, key: Path | None) -> bool:
    """Whether TLS is on; a one-line ExoacqError for a missing or unusable certificate or key."""
    if cert is None and key is None:
        return False
    if cert is None or key is None:
        raise ExoacqError("TLS needs both --tls-cert and --tls-key", code="usage")
    import ssl
    _readable(cert, "--tls-cert")
    _readable(key, "--tls-key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ExoacqError(f"--tls-cert {cert} / --tls-key {key}: not a usable certificate and key "
                          f"({getattr(exc, 'reason', None) or exc})", code="usage") from None
    return True


def cmd_web(args: argparse.Namespace) -> int:
    import logging

    from exoacq.cli_common import client_keys
    from exoacq.security import is_local

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = parse_listen(args.listen)
    tls = check_tls(args.tls_cert, args.tls_key)
    if not is_local(f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}") and (
            args.operators is None or not tls):
        raise ExoacqError(f"--listen {args.listen} is reachable off this host: the console then needs logins and "
                          "HTTPS (--operators FILE from `exoacq web-operators add`, --tls-cert and --tls-key)",
                          code="usage")
    keys = client_keys(args)
    data_dir = args.data_dir or default_data_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExoacqError(f"--data-dir {data_dir}: cannot make it ({exc.strerror})", code="usage") from None
    auth = None
    if args.operators is not None:
        from exoacq.web.auth import Auth
        auth = Auth(args.operators, https=tls)
    from exoacq.audit import pop_claimed_operator, stated_operator
    operator = args.operator
    if operator is None:
        operator = stated_operator()
    else:
        try:
            pop_claimed_operator({"operator": operator})
        except ExoacqError as exc:
            raise ExoacqError(f"--operator {operator!r}: {str(exc).removeprefix('operator: ')}", code="usage") from None
    if not 0 <= args.nice <= 19:
        raise ExoacqError(f"--nice {args.nice}: must be 0 (the daemon's priority) to 19", code="usage")
    listener = _listen(host, port)
    if args.simulated:
        return _with_simulated_daemon(args, data_dir, lambda: _console(args, listener, host, tls, keys, auth,
                                                                       operator, data_dir))
    return _console(args, listener, host, tls, keys, auth, operator, data_dir)


def _with_simulated_daemon(args: argparse.Namespace, data_dir: Path, serve: Any) -> int:
    """``--simulated``: a simulated daemon as a child process for as long as the console serves."""
    from exoacq.demo import start_daemon, stop_daemon

    if args.control != default_control():
        raise ExoacqError("--simulated starts its own daemon: leave out --control", code="usage")
    daemon_dir = data_dir / "simulated-daemon"
    daemon_dir.mkdir(parents=True, exist_ok=True)
    log_path = daemon_dir / "daemon.log"
    print(f"exoacq web: starting `exoacq daemon --simulated` (data and log in {daemon_dir}) ...", flush=True)
    process, args.control = start_daemon(daemon_dir, log_path)
    try:
        return serve()
    finally:
        stop_daemon(process, timeout_s=10.0)


def _console(args: argparse.Namespace, listener: socket.socket, host: str, tls: bool, keys: Any, auth: Any,
             operator: str | None, data_dir: Path) -> int:
    if args.nice and hasattr(os, "nice"):  # after a --simulated daemon started: it keeps its own priority
        os.nice(args.nice)
    from exoacq.web.app import create_app
    from exoacq.web.bridge import DaemonBridge
    bridge = DaemonBridge(args.control, keys=keys, operator=operator)
    bridge.start()
    try:
        app = create_app(bridge, data_dir=data_dir, auth=auth, operator=operator)
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host  # a wildcard: this host's name
        url = f"{'https' if tls else 'http'}://{f'[{shown}]' if ':' in shown else shown}:{listener.getsockname()[1]}/"
        return _serve(app, listener, url, args, data_dir)
    finally:
        bridge.close()


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is one line, not a server's log."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ExoacqError(f"--listen {host}:{port}: unknown host ({exc.strerror})", code="usage") from None
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise ExoacqError(f"cannot listen on {host}:{port}: {exc.strerror}", code="usage") from None
    listener.setblocking(False)
    return listener


def _serve(app: Any, listener: socket.socket, url: str, args: argparse.Namespace, data_dir: Path) -> int:
    """Serve until SIGTERM or Ctrl-C (uvicorn shuts down gracefully on either)."""
    import asyncio

    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="on",
                            ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
                            ssl_keyfile=str(args.tls_key) if args.tls_key else None)
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.ensure_future(server.serve(sockets=[listener]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            print(f"exoacq web: open {url} (daemon {args.control}; "
                  f"{'login required' if args.operators else 'no login: loopback only'}; data in {data_dir}); "
                  "Ctrl-C stops", flush=True)
        await task

    # uvicorn re-raises the signal that stopped it after its graceful shutdown: let that end here.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(serve())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        listener.close()
    if not server.started:
        raise ExoacqError("the console did not start (see the messages above)")
    return 0


# -- web-operators -------------------------------------------------------------------------------------
def cmd_web_operators(args: argparse.Namespace) -> int:
    from exoacq.web.auth import OperatorsFile
    path = args.file or default_data_dir() / "operators.toml"
    if args.file is not None and not path.resolve().parent.is_dir():  # the default's folder is made; a given one not
        raise ExoacqError(f"cannot write {path}: no folder {path.resolve().parent}", code="usage")
    operators = OperatorsFile.read(path, missing_ok=args.action == "add")
    if args.action == "list":
        if not operators.operators:
            print(f"no operators in {path}")
        for name, entry in sorted(operators.operators.items()):
            ways = [w for w, key in (("password", "password"), ("token", "token_sha256")) if key in entry]
            print(f"{name}: {' and '.join(ways)} (changed {entry.get('changed', '?')})")
        return 0
    if args.action == "remove":
        operators.remove(args.name)
        operators.write()
        print(f"operator {args.name} removed from {path}")
        return 0
    if args.token:
        if args.password_stdin:
            raise ExoacqError("--token makes a token, --password-stdin sets a password: give one of them",
                              code="usage")
        token = operators.new_token(args.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        operators.write()
        print(f"operator {args.name}: token (shown once, keep it secret; send `Authorization: Bearer TOKEN`):")
        print(token)
        return 0
    password = _read_password(args.password_stdin)
    operators.set_password(args.name, password)
    path.parent.mkdir(parents=True, exist_ok=True)
    operators.write()
    print(f"operator {args.name}: password set in {path}")
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass
        if not os.isatty(0):
            raise ExoacqError("no terminal to read the password from: use --password-stdin", code="usage")
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ExoacqError("the passwords differ", code="usage")
    if len(password) < 8:
        raise ExoacqError("a password has at least 8 characters", code="usage")
    return password
