"""Where a server of the project (`avatar view`, `avatar live`) listens: --host and --port checked before the
avatar loads, whether a host is this machine only, the URL to open, and what is said when a server can be
reached from beyond this machine."""

from __future__ import annotations

import errno
import ipaddress
import socket

from avatar.errors import UserError

LOCAL_NAMES = ("localhost", "ip6-localhost")
HOST_CHOICES = "127.0.0.1 or ::1 (this machine only), 0.0.0.0 (every network interface) or an address of this machine"


def _addresses(host: str, port: int) -> list[tuple]:
    """getaddrinfo's (family, address) of the places a server asked to listen on `host` binds (asyncio's
    create_server binds them all), or a UserError for an empty or unknown host. An empty host is refused:
    to the sockets API it means every interface, to a script it usually means an unset variable."""
    if not host.strip():
        raise UserError(f"--host {host!r}: empty. Give {HOST_CHOICES}.")
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise UserError(f"--host {host}: cannot listen there ({why}). Give {HOST_CHOICES}.") from None
    return [(family, address) for family, _, _, _, address in found]


def listening_port(host: str, port: int) -> int:
    """The port a test bind of `host` got (`port`, or a free one for 0, given back at once), or a UserError that
    says why `--host` / `--port` cannot be used. The socket has the host's own address family (IPv6 for ::1)."""
    family, address = _addresses(host, port)[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"--port {port}: in use on {host} (another viewer or server?). Give another --port, "
                    "or leave it out for a free one."
                ) from None
            if exc.errno == errno.EACCES:
                raise UserError(
                    f"--port {port}: this user may not listen on it (ports below 1024 need administrator "
                    "rights). Give a port above 1023, or leave it out for a free one."
                ) from None
            raise UserError(
                f"--host {host}: cannot listen there ({exc.strerror or exc}). Give {HOST_CHOICES}."
            ) from None
        return s.getsockname()[1]


def is_local(host: str) -> bool:
    """True when `host` reaches this machine only (a loopback address or name); "", 0.0.0.0 and :: listen on
    every interface, so they are not."""
    host = host.strip().strip("[]")
    if host.lower() in LOCAL_NAMES:
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def url(host: str, port: int, scheme: str = "http", path: str = "") -> str:
    """The URL a browser on this machine opens: the loopback address for a wildcard host (0.0.0.0, ::), an
    IPv6 address in brackets (its zone's % escaped)."""
    ip = _ip(host)
    if ip is not None and ip.is_unspecified:
        host = "127.0.0.1" if ip.version == 4 else "::1"
        ip = _ip(host)
    if ip is not None and ip.version == 6:
        host = f"[{host.replace('%', '%25')}]"
    return f"{scheme}://{host}:{port}{path}"


def exposure_warning(host: str, port: int, server: str = "the viewer") -> str | None:
    """What to say when `server` listening on `host` can be reached from other machines (None: this one only)."""
    addresses = [address[0] for _, address in _addresses(host, port)]
    ips = [ip for ip in map(_ip, addresses) if ip is not None]
    if any(ip.is_unspecified for ip in ips):
        where, reach = f"on every network interface (--host {host})", socket.gethostname()
    elif all(ip.is_loopback for ip in ips):
        return None
    else:
        where, reach = f"on {', '.join(str(ip) for ip in ips if not ip.is_loopback)} (--host {host})", host
    return (
        f"{server} listens {where}: anyone who can reach this machine on port {port} can open it (it has no "
        f"password), at {url(reach, port)} for instance. Give --host 127.0.0.1 to keep it to this machine."
    )
