"""Network addresses: what ``HOST:PORT`` means, for every command that listens or connects
(calibrate link, the draft server, the target worker)."""

from __future__ import annotations

from .errors import StarsimError


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"``, ``":port"`` or ``"port"`` -> (host, port)."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or default_host
    try:
        value = int(port)
    except ValueError:
        raise StarsimError(f"bad address {text!r}: expected HOST:PORT (e.g. 127.0.0.1:7000)") from None
    if not 0 <= value <= 65535:
        raise StarsimError(f"bad address {text!r}: port must be 0..65535")
    return host, value


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
