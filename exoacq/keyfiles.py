"""CurveZMQ key files of a daemon (exoacq.security, ``exoacq keys``): ZeroMQ certificates.

``KEYS_DIR/server.key`` (public) and ``server.key_secret`` (the pair, mode 0600);
``authorized/NAME.key``, the public key of each operator the daemon lets in;
``clients/NAME.key_secret``, pairs ``exoacq keys add`` made, to hand to their operators.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import zmq
import zmq.auth
from zmq.utils import z85

from exoacq.errors import ExoacqError

log = logging.getLogger("exoacq.security")

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")
RESERVED_NAMES = {"server", "local", "daemon"}
SERVER = "server"


def default_keys_dir() -> Path:
    return Path(platformdirs.user_config_dir("exoacq")) / "keys"


def fingerprint(public_key_z85: bytes | str) -> str:
    """A short, comparable form of a public key: the first 16 hex digits of its SHA-256, in fours."""
    raw = z85.decode(public_key_z85.encode() if isinstance(public_key_z85, str) else public_key_z85)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return ":".join(digest[i:i + 4] for i in range(0, 16, 4))


#: A certificate file is ~300 bytes.
MAX_KEY_FILE_BYTES = 64 * 1024


def read_key_file(path: Path | str, what: str, secret: bool = False) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys of a certificate file; a one-line ExoacqError when it is not one."""
    try:
        if Path(path).exists() and (not Path(path).is_file() or Path(path).stat().st_size > MAX_KEY_FILE_BYTES):
            raise ValueError(f"not a regular file of at most {MAX_KEY_FILE_BYTES // 1024} KiB")  # not /dev/zero
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        reason = "no such file" if not Path(path).exists() else str(exc)
        raise ExoacqError(f"{what} {path}: not a CurveZMQ key file ({reason})", code="bad_key") from None
    for key in (public, secret_key):
        if key is not None and (len(key) != 40 or _bad_z85(key)):
            raise ExoacqError(f"{what} {path}: the key is not 40 Z85 characters", code="bad_key")
    if secret and secret_key is None:
        raise ExoacqError(f"{what} {path} holds a public key only: give the secret key file "
                          "(NAME.key_secret)", code="bad_key")
    return public, secret_key


def _bad_z85(key: bytes) -> bool:
    try:
        z85.decode(key)
    except (ValueError, KeyError, TypeError):
        return True
    return False


def _create_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A new key pair NAME.key / NAME.key_secret in ``directory``; the secret is never readable by others:
    it is made in a private (0700) temporary folder, set to 0600, then moved in place."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = Path(tempfile.mkdtemp(dir=directory, prefix=".new-"))
    try:
        public, secret = (Path(p) for p in zmq.auth.create_certificates(scratch, name))
        secret.chmod(0o600)
        public.chmod(0o644)
        os.replace(secret, directory / secret.name)
        os.replace(public, directory / public.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return directory / f"{name}.key", directory / f"{name}.key_secret"


@dataclass
class KeysDir:
    """A daemon's keys: ``server.key`` + ``server.key_secret``, ``authorized/NAME.key`` (clients it lets
    in), ``clients/NAME.key_secret`` (pairs ``keys add`` made, to hand to their operators)."""

    path: Path

    @property
    def server_public(self) -> Path:
        return self.path / f"{SERVER}.key"

    @property
    def server_secret(self) -> Path:
        return self.path / f"{SERVER}.key_secret"

    @property
    def authorized(self) -> Path:
        return self.path / "authorized"

    def init(self) -> Path:
        """Make the server's key pair (refused if there is one: clients hold its public key)."""
        if self.server_secret.exists():
            raise ExoacqError(f"{self.server_secret} exists already: the clients trust its public key; remove "
                              "it by hand to make a new one", code="exists")
        self._check_folder()
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.chmod(0o700)
        self.authorized.mkdir(exist_ok=True)
        return _create_pair(self.path, SERVER)[0]

    def _check_folder(self) -> None:
        """The keys directory, and the folder it is made in, are folders where they exist (not files)."""
        for where in (self.path, *self.path.parents):
            if where.exists():
                if not where.is_dir():
                    raise ExoacqError(f"keys directory {self.path}: {where} is a file, not a folder", code="usage")
                return

    def add(self, name: str, public_key_file: Path | None = None) -> tuple[Path, Path | None]:
        """Authorise a client by operator name: its public key file, or a new pair made here.
        Returns (the authorised public key, the new secret key file or None)."""
        if not NAME_PATTERN.match(name) or name in RESERVED_NAMES:
            raise ExoacqError(f"client name {name!r}: letters, digits, '.', '-' and '_', starting with a "
                              f"letter, at most 40; not {', '.join(sorted(RESERVED_NAMES))}", code="usage")
        target = self.authorized / f"{name}.key"
        if target.exists():
            raise ExoacqError(f"client {name} is authorised already ({target}); remove that file to replace "
                              "its key", code="exists")
        self._check_folder()
        self.authorized.mkdir(parents=True, exist_ok=True)
        secret_file = None
        if public_key_file is None:
            public_file, secret_file = _create_pair(self.path / "clients", name)
        else:
            public, _ = read_key_file(public_key_file, "public key file")
            public_file = self.path / "clients" / f"{name}.key"
            public_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            public_file.write_text(f"# exoacq client {name}\ncurve\n    public-key = \"{public.decode()}\"\n")
        shutil.copyfile(public_file, target)
        return target, secret_file

    def clients(self) -> dict[str, bytes]:
        """Authorised operator name -> public key (z85); unreadable files are logged and skipped."""
        found = {}
        for path in sorted(self.authorized.glob("*.key")):
            try:
                found[path.stem] = read_key_file(path, "authorised key")[0]
            except ExoacqError as exc:
                log.error("%s: skipped", exc)
        return found

    def describe(self) -> list[dict[str, str]]:
        """Server and authorised clients: name, fingerprint, file (for ``exoacq keys list``)."""
        rows = []
        if self.server_public.exists():
            rows.append({"name": SERVER, "role": "server",
                         "fingerprint": fingerprint(read_key_file(self.server_public, "server key")[0]),
                         "file": str(self.server_public)})
        for name, key in self.clients().items():
            rows.append({"name": name, "role": "client", "fingerprint": fingerprint(key),
                         "file": str(self.authorized / f"{name}.key")})
        return rows
