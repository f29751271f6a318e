"""Where a local server listens and how its address is written: what `avatar live` (and any server of the
project) says about `--host`. Whether a host and port can be bound at all is `avatar.viewer.app.listening_port`.
"""

from __future__ import annotations

import ipaddress
import socket

LOCAL_NAMES = ("localhost", "ip6-localhost")


def is_local(host: str) -> bool:
    """True when `host` reaches this machine only (a loopback address or name); "" and 0.0.0.0 / :: listen on
    every interface, so they are not."""
    host = host.strip().strip("[]")
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """`host` as it goes into a URL: an IPv6 address in brackets; the all-interfaces addresses as this machine's
    name (a browser cannot open 0.0.0.0 from elsewhere)."""
    host = host.strip().strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return socket.gethostname()
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def url(scheme: str, host: str, port: int, path: str = "/") -> str:
    """The address a browser opens for a server on `host`:`port`."""
    return f"{scheme}://{url_host(host)}:{port}{path}"
