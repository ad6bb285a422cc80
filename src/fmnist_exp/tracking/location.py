"""What a tracking URI names (its scheme, its SQLite file) and whether its database answers, in seconds."""

from __future__ import annotations

import socket
from pathlib import Path

from fmnist_exp.errors import TrackingError


def sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_database_reachable(uri: str, key: str, timeout: float) -> None:
    """An unknown scheme, or a database server that does not accept connections, in one line.

    MLflow's own connection to a database retries for minutes and needs the driver installed to say
    even that; a plain TCP connection answers in seconds.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0] or uri  # postgresql+psycopg2 -> postgresql; "databricks"
    if scheme not in STORE_SCHEMES:
        raise TrackingError(
            f"{key}: {uri} is not an MLflow store URI (scheme {parts.scheme or 'none'!r}); "
            "use a sqlite:///<absolute path>.db file or an http://host:port tracking server"
        )
    if scheme not in DATABASE_PORTS:
        return
    try:
        port = parts.port or DATABASE_PORTS[scheme]
    except ValueError as error:
        raise TrackingError(f"{key}: {uri} has an invalid port ({error})") from error
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return
    except OSError as error:
        raise TrackingError(
            f"{key}: cannot reach the {scheme} database at {parts.hostname or 'localhost'}:{port} ({error}). "
            "Start it, or point the key at a reachable store or a sqlite:/// file."
        ) from error
