"""``responder dkim keygen|check``: write a signing key and its DNS record, compare the published one."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from responder.config.settings import Settings
from responder.errors import ExitCode

if TYPE_CHECKING:
    from responder.mail.dkimkeys import SigningKey


def register(commands: Any) -> None:
    dkim = commands.add_parser("dkim", help="DKIM signing keys: generate one, check its DNS record")
    actions = dkim.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    keygen = actions.add_parser(
        "keygen", help="write a key for DOMAIN into dkim.keys_dir and print its DNS TXT record"
    )
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("--selector", help="default: dkim.selector (rsa), dkim.ed25519_selector (ed25519)")
    keygen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--bits", type=_bits, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(dkim_handler=_keygen)
    check = actions.add_parser(
        "check", help="look up SELECTOR._domainkey.DOMAIN and say whether it publishes the key"
    )
    check.add_argument("domain", metavar="DOMAIN")
    check.add_argument("--selector", help="default: the configured selectors (the ed25519 one when enabled)")
    check.set_defaults(dkim_handler=_check)


def _bits(text: str) -> int:
    if not text.isdecimal() or not 1024 <= int(text) <= 4096:
        raise argparse.ArgumentTypeError(f"RSA keys of 1024 to 4096 bits, got {text!r}")
    return int(text)


def run_dkim(args: argparse.Namespace, settings: Settings) -> int:
    """The dkim subcommands need no database; an unusable setting or input is status 1."""
    from responder.mail.dkimkeys import dkim_domain

    if not settings.dkim.keys_dir:
        print("responder: dkim.keys_dir is not set in the configuration", file=sys.stderr)
        return ExitCode.EX_FAILURE
    domain = dkim_domain(args.domain)
    if domain is None:
        print(f"responder: not a domain name: {args.domain!r}", file=sys.stderr)
        return ExitCode.EX_USAGE
    status: int = args.dkim_handler(args, settings, domain)
    return status


def _keygen(args: argparse.Namespace, settings: Settings, domain: str) -> int:
    from responder.config.settings import dkim_selector
    from responder.mail.dkimkeys import (
        KeyProblem,
        SigningKey,
        generate,
        parse_key,
        record_text,
        write_key,
        zone_line,
    )

    dkim = settings.dkim
    selector = args.selector or (dkim.selector if args.algorithm == "rsa" else dkim.ed25519_selector)
    try:
        selector = dkim_selector(selector)
    except ValueError as exc:
        print(f"responder: {exc}", file=sys.stderr)
        return ExitCode.EX_USAGE
    pem = generate(args.algorithm, args.bits)
    try:
        path = write_key(dkim.keys_dir, domain, selector, args.algorithm, pem, args.force)
    except FileExistsError as exc:
        print(f"responder: {exc}", file=sys.stderr)
        return ExitCode.EX_FAILURE
    except OSError as exc:
        print(f"responder: cannot write the key into {dkim.keys_dir}: {exc}", file=sys.stderr)
        return ExitCode.EX_FAILURE
    try:
        private, public = parse_key(pem, args.algorithm, path)
    except KeyProblem as exc:  # a generated key always parses; said plainly if not
        print(f"responder: {exc}", file=sys.stderr)
        return ExitCode.EX_FAILURE
    key = SigningKey(domain, selector, args.algorithm, path, private, public)
    print(f"; key written to {path} (mode 0600)")
    print(f"; publish this TXT record, then run: responder dkim check {domain} --selector {selector}")
    print(f"; the record's text: {record_text(key)}")
    print(zone_line(key))
    return ExitCode.EX_OK


def _check(args: argparse.Namespace, settings: Settings, domain: str) -> int:
    from responder.config.settings import dkim_selector
    from responder.mail.dkimkeys import KeyMissing, KeyProblem, key_path, read_key

    dkim = settings.dkim
    if args.selector:
        try:
            args.selector = dkim_selector(args.selector)
        except ValueError as exc:
            print(f"responder: {exc}", file=sys.stderr)
            return ExitCode.EX_USAGE
        ed25519 = key_path(dkim.keys_dir, domain, args.selector, "ed25519")
        rsa = key_path(dkim.keys_dir, domain, args.selector, "rsa")
        wanted = [(args.selector, "ed25519" if ed25519.exists() and not rsa.exists() else "rsa")]
    else:
        wanted = [(dkim.selector, "rsa")]
        if dkim.ed25519:
            wanted.append((dkim.ed25519_selector, "ed25519"))
    worst = ExitCode.EX_OK
    for selector, algorithm in wanted:
        try:
            key = read_key(dkim.keys_dir, domain, selector, algorithm)
        except KeyMissing as exc:
            hint = "" if algorithm == "rsa" else " --algorithm ed25519"
            print(f"unreadable key: {exc}; create one with: responder dkim keygen {domain}{hint}")
            worst = max(worst, ExitCode.EX_FAILURE)
            continue
        except KeyProblem as exc:
            print(f"unreadable key: {exc}")
            worst = max(worst, ExitCode.EX_FAILURE)
            continue
        worst = max(worst, _compare(key, settings))
    return worst


def _compare(key: SigningKey, settings: Settings) -> int:
    from responder.mail.dkimkeys import MATCH, compare_records, record_name, record_text
    from responder.verify.dns import Dns, DnsTrouble, make_resolver

    name = record_name(key.domain, key.selector)
    verify = settings.verify
    try:
        texts = Dns(make_resolver(verify), verify.dns_timeout, time.monotonic() + verify.budget).txt(name)
    except DnsTrouble as exc:
        print(f"lookup failed: {name} TXT: {exc}; try again later")
        return ExitCode.EX_TEMPFAIL
    except Exception as exc:  # no resolver configuration at all
        print(f"lookup failed: {name} TXT: {exc}")
        return ExitCode.EX_TEMPFAIL
    verdict, found = compare_records(key, texts)
    print(f"{verdict}: {name} ({key.algorithm}, {key.path}): {found}")
    if verdict != MATCH:
        print(f"  publish: {record_text(key)}")
        return ExitCode.EX_FAILURE
    return ExitCode.EX_OK
