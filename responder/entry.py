"""Console entry point that keeps the MTA's exit-status contract even when the installation is broken."""

import sys

EX_TEMPFAIL = 75


def main() -> int:
    # A package upgrade in progress or a broken install must defer the message, not bounce it:
    # Python's own status for an import error (1) would make Postfix bounce to the sender.
    try:
        from responder.cli.main import main as cli_main
    except BaseException as exc:  # anything at all, SyntaxError included
        from contextlib import suppress

        with suppress(AttributeError, OSError, ValueError):  # descriptor 2 closed: the status matters more
            sys.stderr.write(f"responder: cannot load the program ({exc!r}); deferring\n")
        return EX_TEMPFAIL if "deliver" in sys.argv[1:] else 1
    return cli_main()
