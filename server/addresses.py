"""Server addresses as people write them: HOST, HOST:PORT, [V6]:PORT or a URL, as Ollama reads OLLAMA_HOST."""

from __future__ import annotations

import urllib.parse


def split_host(value: str) -> tuple[str, int | None, str]:
    """HOST, HOST:PORT, [V6]:PORT or SCHEME://HOST[:PORT] as (host, port or None, scheme); a bare IPv6 stays whole."""
    if "://" in value or value.startswith("["):
        parts = urllib.parse.urlsplit(value if "://" in value else "//" + value)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"host {value!r}: the port is not a number from 0 to 65535") from None
        if parts.scheme not in ("", "http", "https") or not parts.hostname:
            raise ValueError(f"host {value!r}: expected HOST, HOST:PORT or http://HOST:PORT")
        if port is None and parts.scheme:  # as Ollama reads OLLAMA_HOST: a URL without a port has its scheme's
            port = 443 if parts.scheme == "https" else 80
        return parts.hostname, port, parts.scheme or "http"
    name, sep, port_text = value.rpartition(":")
    if sep and ":" not in name:
        if not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(f"host {value!r}: the port is not a number from 0 to 65535")
        return name, int(port_text), "http"
    return value, None, "http"
