"""``exoacq keys init|add|list``: the CurveZMQ keys of a daemon reachable off its host (exoacq.security).

Run on the daemon's host, as the user the daemon runs as (or with ``--dir`` = its ``[daemon] keys_dir``)::

    exoacq keys init                  # the server's key pair: server.key (public), server.key_secret
    exoacq keys add alice             # a new pair for operator alice, her public key authorised
    exoacq keys add bob bob.key       # authorise a public key bob made himself
    exoacq keys list                  # names and fingerprints

The daemon reads the authorised keys when it starts: restart it after ``keys add``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from exoacq.keyfiles import KeysDir, default_keys_dir, fingerprint, read_key_file


def add_keys_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="CurveZMQ keys: needed when the daemon binds a socket off loopback "
                                    "(init the server's pair, add clients by name, list them)")
    p.add_argument("--dir", type=Path, default=None,
                   help="the keys directory (the daemon's [daemon] keys_dir; default ~/.config/exoacq/keys)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(p))
    actions.add_parser("init", help="make the server's key pair")
    q = actions.add_parser("add", help="authorise a client by operator name (a new key pair is made "
                                       "unless PUBLIC_KEY_FILE is given)")
    q.add_argument("name", help="the operator's name, e.g. alice (it becomes the client's identity in the logs)")
    q.add_argument("public_key_file", nargs="?", type=Path, help="the client's public key (NAME.key)")
    q = actions.add_parser("list", help="the server's and the authorised clients' key fingerprints")
    q.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    keys = KeysDir(args.dir or default_keys_dir())
    if args.action == "init":
        public = keys.init()
        print(f"server key pair made in {keys.path} (fingerprint {fingerprint(read_key_file(public, 'key')[0])})")
        print(f"  clients need its public key: {public}")
        print("  next: `exoacq keys add NAME` for each operator")
    elif args.action == "add":
        authorised, secret = keys.add(args.name, args.public_key_file)
        print(f"client {args.name} authorised: {authorised} "
              f"(fingerprint {fingerprint(read_key_file(authorised, 'key')[0])})")
        if secret is not None:
            print(f"  its secret key, for {args.name} only (copy it privately, then delete it here): {secret}")
        their_key = secret or f"{args.name}.key_secret (their own)"
        print(f"  {args.name} connects with: --key {their_key} --server-key {keys.server_public}")
        print("  restart the daemon to let the new key in")
    else:
        rows = keys.describe()
        if args.json:
            print(json.dumps(rows))
        elif not rows:
            print(f"no keys in {keys.path} (`exoacq keys init`)")
        else:
            for row in rows:
                print(f"{row['name']:<20} {row['role']:<7} {row['fingerprint']}  {row['file']}")
    return 0
