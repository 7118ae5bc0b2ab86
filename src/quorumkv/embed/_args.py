"""A :class:`ServerConfig` as ``quorumkv`` command-line flags, and the client endpoints it serves on.

Invariant: for every config ``c`` that :func:`config_to_args` accepts, parsing ``config_to_args(c)`` with the
``quorumkv`` CLI (and an environment without ``ETCD_*``/``QUORUMKV_*`` variables) yields a config equal to ``c``.
Every flag backed by a field is emitted, so nothing depends on the CLI's defaults or the environment.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from quorumkv.server.config import ConfigError, ServerConfig
from quorumkv.server.config_sources import FLAG_SPECS, FlagSpec

__all__ = ["client_endpoints", "config_to_args"]

#: Listen hosts that mean "every interface"; a local client reaches them through the loopback address.
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def _list_item(spec: FlagSpec, item: str) -> str:
    """One element of a list flag; the CLI splits on ``,`` and strips, so those cannot round-trip."""
    if item == "" or "," in item or item != item.strip():
        raise ConfigError(
            f"{spec.option}: element {item!r} cannot be passed on the command line "
            "(list elements must be non-empty, without commas or surrounding whitespace)",
            flag=spec.option,
        )
    return item


def _format(spec: FlagSpec, value: object) -> str:
    """The flag's text for ``value``; the inverse of the CLI's conversion for ``spec.kind``."""
    if spec.kind == "bool":
        return "true" if value else "false"
    if spec.kind == "int":
        return str(value)
    if spec.kind == "duration_ms":
        return f"{value}ms"
    if spec.kind == "list":
        assert isinstance(value, list)
        return ",".join(_list_item(spec, str(item)) for item in value)
    text = str(value)
    if "\x00" in text:
        raise ConfigError(f"{spec.option}: a NUL character cannot be passed on the command line", flag=spec.option)
    return text


def config_to_args(config: ServerConfig) -> list[str]:
    """Every field of ``config`` as ``--flag=value`` arguments for ``python -m quorumkv``.

    Raises :class:`ConfigError` (naming the flag) for values the command line cannot carry: a list element
    that is empty, contains ``,`` or has surrounding whitespace, or a string with a NUL character.
    """
    return [f"{spec.option}={_format(spec, getattr(config, spec.field))}" for spec in FLAG_SPECS]


def client_endpoints(config: ServerConfig) -> list[str]:
    """``host:port`` for each listen client URL, as a local gRPC client dials it (``["127.0.0.1:2379"]``).

    Wildcard listen hosts map to loopback (``0.0.0.0`` -> ``127.0.0.1``, ``::`` -> ``[::1]``); IPv6 hosts are
    bracketed. Raises :class:`ConfigError` for port 0, whose real port an embedder could not learn.
    """
    out: list[str] = []
    for url in config.listen_client_urls:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = _WILDCARD_HOSTS.get(host, host)
        if parts.port == 0:
            raise ConfigError(
                f"--listen-client-urls: {url} uses port 0; quorumkv.embed needs a fixed port to report "
                "client endpoints and probe readiness (pick a free port first)",
                flag="--listen-client-urls",
            )
        if ":" in host:
            host = f"[{host}]"
        out.append(f"{host}:{parts.port}")
    return out
