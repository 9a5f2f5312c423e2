# -*- test-case-name: tests.test_aiproxy_units -*-
"""
What a client asks the proxy: the head of its request (request line and
headers), the target of a C{CONNECT}, and the bridge key in
C{Proxy-Authorization}.

Everything here is hostile input: parsers return a value or raise
L{BadHead} with a message fit for the client, and never echo a credential.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from typing import Optional

#: The longest request head the proxy reads.
MAX_HEAD = 16 * 1024
#: The most header lines it accepts.
MAX_HEADERS = 100
#: The longest bridge key it accepts.
MAX_TOKEN = 1024

_METHOD = re.compile(rb"[A-Z]{1,20}")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
_TOKEN = re.compile(r"[\x21-\x7e]+")


class BadHead(Exception):
    """
    A request the proxy cannot read.

    @ivar status: the HTTP status to answer with.
    @ivar message: what to tell the client (no request bytes in it).
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class ProxyRequest:
    """
    A request's head as the proxy read it.

    @ivar headers: lower-case names to their values, in order.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: dict[bytes, list[bytes]]

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header C{name} (lower-case)."""
        return self.headers.get(name, [])


def parse_head(head: bytes) -> ProxyRequest:
    """
    Parse a request head: the bytes before the blank line that ends it.

    @raise BadHead: a malformed request line, header line, or too many headers.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if (len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2])
            or not parts[1] or not all(0x21 <= b < 0x7f for b in parts[1])):
        raise BadHead("Malformed request line: expected 'METHOD TARGET HTTP/1.1'.")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadHead(f"More than {MAX_HEADERS} header lines.", 431)
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # No obsolete line folding and no space before the colon (RFC 9112 section 5):
        # both are ways to smuggle a header past one reader and not another.
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise BadHead("Malformed header line.")
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise BadHead("Malformed header value.")
        headers.setdefault(name.lower(), []).append(value.strip(b" \t"))
    return ProxyRequest(parts[0], parts[1], parts[2], headers)


def normal_host(host: str) -> str:
    """
    C{host} as the allow-list and the guard compare it: lower-case, without
    a final dot, IPv6 without brackets.

    @raise BadHead: when it is neither a host name nor an IP address.
    """
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise BadHead("Malformed IPv6 address in the request target.") from None
    # (An IPv4 address passes as a host name: Python reads only the dotted
    # decimal form, without leading zeros, which is already canonical.)
    name = host.lower().rstrip(".")
    if not _HOST_NAME.fullmatch(name):
        raise BadHead("The request target is not a host name or an IP address.")
    return name


def parse_authority(target: bytes) -> tuple[str, int]:
    """
    The C{(host, port)} of a C{CONNECT} target (C{host:port},
    C{[v6]:port}); the host as L{normal_host} gives it.

    @raise BadHead: when the target is not of that form.
    """
    text = target.decode("ascii", "replace")
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        raise BadHead("CONNECT needs a 'host:port' target.")
    if ":" in host and not host.startswith("["):
        raise BadHead("An IPv6 address in a CONNECT target goes in brackets: '[::1]:443'.")
    return normal_host(host), int(port)


def absolute_host(target: bytes) -> Optional[str]:
    """
    The host of an absolute-form target (C{http://host[:port]/path}, a
    plain-HTTP proxy request), or L{None} for any other form.

    @raise BadHead: an absolute target whose host cannot be read.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or not re.fullmatch(rb"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return None
    authority = re.split(rb"[/?#]", rest, maxsplit=1)[0].rpartition(b"@")[2].decode("ascii", "replace")
    if authority.startswith("["):
        host = authority[:authority.find("]") + 1]
    else:
        host = authority.partition(":")[0]
    if not host:
        raise BadHead("The request target has no host.")
    return normal_host(host)


def proxy_token(values: list[bytes]) -> Optional[str]:
    """
    The bridge key in C{Proxy-Authorization}: the password of C{Basic}
    credentials (C{base64(anything:KEY)}), or a C{Bearer} token.  L{None}
    when there is none, it is malformed, or the header was sent twice with
    different values: the answer is then the same 407 as for a wrong key.
    """
    found = {v.strip() for v in values if v.strip()}
    if len(found) != 1:
        return None
    scheme, _, credentials = found.pop().partition(b" ")
    credentials = credentials.strip()
    scheme = scheme.lower()
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return None
        _, colon, password = decoded.partition(b":")
        if not colon:
            return None
        token = password.decode("latin-1")
    elif scheme == b"bearer":
        token = credentials.decode("latin-1")
    else:
        return None
    if len(token) > MAX_TOKEN or not _TOKEN.fullmatch(token):
        return None
    return token


__all__ = ["BadHead", "MAX_HEAD", "ProxyRequest", "absolute_host", "normal_host", "parse_authority",
           "parse_head", "proxy_token"]
