"""``uploader status``: the engine's snapshot for people, and what "healthy" means.

Healthy (exit 0): the engine is running or idle and no endpoint is known to be down.
Unhealthy (exit 1): an endpoint is down, or the engine is paused, stopping or stopped.
Not running (exit 3): nothing answers on the control socket.
Quarantined jobs do not make the engine unhealthy: they need a person, not the engine, and
``failed`` lists them with their reasons.
"""

from __future__ import annotations

import time
from typing import Any

EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_NOT_RUNNING = 0, 1, 3
_GOOD_STATES = ("starting", "running", "idle")
FAILED_SHOWN = 5


def problems(snapshot: dict[str, Any]) -> list[str]:
    """Why the engine is unhealthy; empty when it is healthy."""
    found = []
    state = snapshot.get("state")
    if state not in _GOOD_STATES:
        found.append(f"engine is {state}")
    for name, health in sorted(snapshot.get("endpoints", {}).items()):
        if not health.get("up"):
            found.append(f"{name} is down: {health.get('reason') or 'unknown reason'}")
    disk = snapshot.get("disk") or {}
    if disk.get("low_space"):
        found.append("low free space for the pending directory: "
                     f"{human_bytes(disk.get('pending_free_bytes') or 0)} left")
    return found


def exit_code(snapshot: dict[str, Any]) -> int:
    return EXIT_UNHEALTHY if problems(snapshot) else EXIT_HEALTHY


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"
    return f"{seconds // 86400:.0f} d {seconds % 86400 // 3600:.0f} h"


def clock(timestamp: float) -> str:
    """Local wall-clock time of ``timestamp``: what a technician compares with a watch."""
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def transfer_line(transfer: dict[str, Any]) -> str:
    total = max(int(transfer.get("total") or 0), 1)
    done = int(transfer.get("done") or 0)
    rate = human_bytes(transfer.get("rate") or 0)
    return (f"{transfer['event_id']} {100 * done / total:.0f}% "
            f"({human_bytes(done)} of {human_bytes(total)}) at {rate}/s, "
            f"ETA {human_duration(transfer.get('eta'))}")


def endpoint_text(name: str, health: dict[str, Any], now: float) -> str:
    if health.get("up"):
        return "up"
    since = human_duration(now - float(health.get("since", now)))
    return f"DOWN for {since}: {health.get('reason') or 'unknown reason'}"


def render(snapshot: dict[str, Any]) -> str:
    """A few aligned lines, most important first."""
    now = float(snapshot.get("time", time.time()))
    rows: list[tuple[str, str]] = []
    state = str(snapshot.get("state"))
    last = snapshot.get("last_pass")
    if last:
        state += (f" (last pass {human_duration(now - last['finished'])} ago: "
                  f"{last.get('completed', 0)} completed, {last.get('retry', 0)} left for "
                  f"retry, {last.get('quarantined', 0)} quarantined)")
    rows.append(("engine", state))
    endpoints = snapshot.get("endpoints") or {}
    if not endpoints:
        rows.append(("endpoints", "no failure seen"))
    for name, health in sorted(endpoints.items()):
        rows.append((name, endpoint_text(name, health, now)))
    pending = snapshot.get("pending") or []
    count = int(snapshot.get("pending_count", len(pending)))
    if count and pending:
        waiting = sum(1 for p in pending if p.get("last_error"))
        text = f"{count}, oldest {human_duration(pending[0]['age'])}"
        if waiting:
            text += f"; {waiting} failed before and wait for a retry"
        rows.append(("pending", text))
    else:
        rows.append(("pending", "none"))
    transfer = snapshot.get("transfer")
    rows.append(("transfer", transfer_line(transfer) if transfer else "none"))
    totals = snapshot.get("totals") or {}
    recent = snapshot.get("recent") or []
    text = f"{totals.get('completed', 0)} since start ({human_bytes(totals.get('bytes_sent', 0))})"
    if recent:
        text += f"; last {recent[0]['event_id']} {human_duration(now - recent[0]['time'])} ago"
    rows.append(("uploaded", text))
    failed = snapshot.get("quarantined") or []
    rows.append(("failed", str(len(failed)) if failed else "none"))
    disk = snapshot.get("disk") or {}
    if disk.get("pending_free_bytes") is not None:
        low = " (LOW)" if disk.get("low_space") else ""
        rows.append(("disk", f"{human_bytes(disk['pending_free_bytes'])} free for pending{low}"))
    width = max(len(key) for key, _ in rows)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    for item in failed[:FAILED_SHOWN]:
        lines.append(f"{'':<{width}}  {item['event_id']}: {item.get('reason', '')}")
    if len(failed) > FAILED_SHOWN:
        lines.append(f"{'':<{width}}  ... and {len(failed) - FAILED_SHOWN} more")
    for problem in problems(snapshot):
        lines.append(f"UNHEALTHY: {problem}")
    return "\n".join(lines)
