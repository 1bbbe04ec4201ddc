"""``responder token create/list/revoke``: API tokens of admins and domain admins, kept as hashes."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from typing import TYPE_CHECKING, Any

from responder.cli.admin.common import EX_OK, AdminError, parse_address, print_json, print_table
from responder.config.settings import Settings

if TYPE_CHECKING:
    from responder.store.database import Store

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def register(commands: Any) -> None:
    token = commands.add_parser("token", help="API tokens for admins and domain admins").add_subparsers(
        dest="token_command", required=True, metavar="COMMAND"
    )
    create = token.add_parser("create", help="make a token; it is shown once, only its hash is kept")
    create.add_argument("name", help="who or what uses it, e.g. helpdesk or provisioning")
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--admin", action="store_true", help="every address")
    scope.add_argument("--domain", help="the addresses of this domain only")
    create.set_defaults(handler=_create)
    listing = token.add_parser("list", help="the tokens (names and scopes; never the tokens)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)
    revoke = token.add_parser("revoke", help="delete a token: calls with it are refused at once")
    revoke.add_argument("name")
    revoke.set_defaults(handler=_revoke)


def _create(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    from responder.store.database import TokenExists
    from responder.web.auth import new_token

    if not _NAME.match(args.name):
        raise AdminError(f"a token name is 1-64 letters, digits and . _ @ -: {args.name!r}")
    domain = None if args.admin else parse_address(f"x@{args.domain}").rpartition("@")[2]
    token = new_token()
    try:
        store.add_token(
            args.name, "admin" if args.admin else "domain", domain, token, dt.datetime.now(dt.UTC)
        )
    except TokenExists as exc:
        raise AdminError(str(exc)) from None
    print(token)
    print(
        f"responder: token {args.name} ({'admin' if args.admin else 'domain admin of ' + str(domain)}); "
        "it is shown only now: keep it safe",
        file=sys.stderr,
    )
    return EX_OK


def _list(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    tokens = store.list_tokens()
    if args.json:
        print_json(
            [
                {
                    "name": t.name,
                    "scope": t.scope,
                    "domain": t.domain,
                    "created": t.created_at.isoformat(timespec="seconds"),
                }
                for t in tokens
            ]
        )
        return EX_OK
    rows = [[t.name, t.scope, t.domain or "-", t.created_at.strftime("%Y-%m-%d %H:%M:%S")] for t in tokens]
    print_table(["NAME", "SCOPE", "DOMAIN", "CREATED (UTC)"], rows, "no tokens")
    return EX_OK


def _revoke(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    if not store.revoke_token(args.name):
        raise AdminError(f"no token named {args.name!r}")
    print(f"{args.name}: revoked")
    return EX_OK
