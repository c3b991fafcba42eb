"""``edgeinfer top``: the dashboard's picture in a terminal, like ``kubectl top`` for
models. Polls a running gateway's ``GET /admin/state`` with the admin key and draws
one row per model with rich (``--once``: one table, then exit)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runtime.errors import GatewayUnreachable

__all__ = ["fetch_state", "render", "run_top"]

MAX_STATE_BYTES = 16 * 1024 * 1024


def fetch_state(url: str, key: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """The gateway's ``/admin/state``."""
    request = urllib.request.Request(url.rstrip("/") + "/admin/state")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = answer.read(MAX_STATE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        detail = exc.read(512).decode(errors="replace")
        raise GatewayUnreachable(f"{url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise GatewayUnreachable(f"cannot reach {url}: {exc}") from None
    if len(body) > MAX_STATE_BYTES:
        raise GatewayUnreachable(f"{url}: /admin/state is over {MAX_STATE_BYTES} bytes")
    try:
        state = json.loads(body)
    except ValueError:
        raise GatewayUnreachable(
            f"{url}: /admin/state is not JSON (is it an edgeinfer gateway?)"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("models"), list):
        raise GatewayUnreachable(f"{url}: /admin/state has no models")
    return state


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render(state: dict[str, Any]) -> Group:
    """One row per model: tier, replicas by state, traffic, latency, cold start, why."""
    table = Table(
        "model",
        "tier",
        "ready/start/drain",
        "want",
        "queue",
        "in flight",
        "req/s",
        "p50/p95/p99 ms",
        "TTFT p50 ms",
        "bridge",
        "last cold start",
        "autoscaler",
        expand=True,
    )
    for m in state["models"]:
        r = m["replicas"]
        samples = m.get("samples") or [{}]
        lat, ttft = m.get("latency_ms", {}), m.get("ttft_ms", {})
        cold = m.get("last_cold_start")
        table.add_row(
            m["model"],
            str(m.get("runtime", "")),
            f"{r['ready']}/{r['starting']}/{r['draining']}",
            str(r["desired"]),
            str(m.get("queue_depth", 0)),
            str(m.get("in_flight", 0)),
            f"{samples[-1].get('rps', 0):.1f}",
            "/".join(_ms(lat.get(p)) for p in ("p50", "p95", "p99")),
            _ms(ttft.get("p50")),
            str(m.get("bridge_served", 0)),
            "-" if cold is None else f"{cold['total_seconds'] * 1000:.0f} ms",
            Text(str(m.get("autoscaler", {}).get("reason", "")), overflow="fold"),
        )
    reasons = Table("model", "why this runtime", box=None, expand=True)
    for m in state["models"]:
        reasons.add_row(m["model"], Text(str(m.get("runtime_reason", "")), overflow="fold"))
    stamp = time.strftime("%H:%M:%S", time.localtime(state.get("now", time.time())))
    return Group(Text(f"edgeinfer top · {stamp}", style="bold"), table, reasons)


def run_top(url: str, key: str | None, *, interval: float, once: bool, console: Console) -> None:
    """Draw until interrupted (``once``: a single table). Raises :class:`GatewayUnreachable`."""
    if once:
        console.print(render(fetch_state(url, key)))
        return
    with Live(render(fetch_state(url, key)), console=console, screen=False) as live:
        while True:
            time.sleep(interval)
            live.update(render(fetch_state(url, key)))
