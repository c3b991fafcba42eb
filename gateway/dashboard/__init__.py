"""The ops dashboard at ``/admin/``: a page and its script and style, served from this
package (nothing from a CDN), polling ``GET /admin/state`` once a second.

The page and its static files hold no data and are served to anyone; every number
comes from ``/admin/state``, which takes the admin key like ``/metrics``. When the
gateway has an admin key the page asks for it and keeps it in the tab's
``sessionStorage``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from gateway.dashboard.history import History

__all__ = ["STATIC_PREFIX", "History", "page", "state", "static_file"]

STATIC_PREFIX = "/admin/static/"
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
# The page runs only its own script and style and talks only to this origin.
_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_FILES = ("dashboard.js", "dashboard.css")


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def page(auth: bool) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The page (``auth``: the gateway wants the admin key) and its headers."""
    body = _read("index.html").replace(b"{{AUTH}}", b"1" if auth else b"0")
    return body, _headers(".html")


def static_file(path: str) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """One of the page's files by its path under :data:`STATIC_PREFIX`, or None."""
    name = path.removeprefix(STATIC_PREFIX)
    if name not in _FILES:
        return None
    return _read(name), _headers(name[name.rindex(".") :])


def _headers(suffix: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", _TYPES[suffix]),
        (b"content-security-policy", _CSP),
        (b"x-content-type-options", b"nosniff"),
        (b"cache-control", b"no-cache"),
    ]


def state(
    models: list[dict[str, Any]], history: History, usage: dict[str, Any], now: float
) -> dict[str, Any]:
    """``/admin/state``: ``/admin/models``' entries, each with its history, and usage."""
    return {
        "now": round(now, 3),
        "models": [{**m, **history.view(m["model"])} for m in models],
        "usage": usage,
    }
