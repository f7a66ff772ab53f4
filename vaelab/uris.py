"""Tracker URIs as vaelab shows and stores them: never with the credentials a URI can carry."""

from __future__ import annotations


def redact(uri: str | None) -> str | None:
    """A URI with any credentials in it (``https://user:token@host``) shown as ``https://***@host``: what vaelab
    writes to disk, to a tracker's parameters and into messages. The credentials stay where the user put them (the
    environment: MLFLOW_TRACKING_URI, or MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)."""
    if not uri or "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return uri
    return f"{scheme}://***@{authority.rsplit('@', 1)[1]}{slash}{path}"
