"""``responder db upgrade/current``: the schema of the database."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from responder.cli.admin.common import EX_OK
from responder.config.settings import Settings

if TYPE_CHECKING:
    from responder.store.database import Store


def register(commands: Any) -> None:
    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND"
    )
    db.add_parser("upgrade", help="migrate the database to the current schema").set_defaults(handler=_upgrade)
    db.add_parser("current", help="print the schema revision of the database").set_defaults(handler=_current)


def _upgrade(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    before = store.current_revision() if store.exists() else None
    store.upgrade()
    after = store.current_revision()
    if after == before:
        print(f"database schema {after} is current: nothing to do")
    else:
        print(f"database schema upgraded from {before or 'empty'} to {after}")
    return EX_OK


def _current(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    from responder.store.schema import SCHEMA_REVISION

    before = store.current_revision() if store.exists() else None
    if before == SCHEMA_REVISION:
        print(f"{before} (current)")
    else:
        print(f"{before or 'none'} (this responder needs {SCHEMA_REVISION}: run `responder db upgrade`)")
    return EX_OK
