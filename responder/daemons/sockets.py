"""Take over the path of a UNIX socket a dead server left behind, never one a live server holds."""

from __future__ import annotations

import os
import socket
import stat


def clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody answers on; OSError for a live server or any other kind of file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"another server is listening on {path}")
