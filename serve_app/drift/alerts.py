"""Drift alerts: a webhook and a command, each bounded by a timeout; what happened is returned."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.request

from serve_app.config import AlertSettings

logger = logging.getLogger("serve_app.drift")


async def deliver_alert(alert: dict, settings: AlertSettings) -> dict[str, str]:
    """Send an alert to the webhook and run the command; what happened to each, for the record."""
    outcome: dict[str, str] = {}
    body = json.dumps(alert, default=str)
    if settings.webhook_url:
        try:
            status = await asyncio.to_thread(_post_json, settings.webhook_url, body, settings.timeout_s)
            outcome["webhook"] = f"HTTP {status}"
        except Exception as error:
            outcome["webhook"] = f"failed: {type(error).__name__}: {error}"
    if settings.command:
        outcome["command"] = await _run_command(settings.command, body, settings.timeout_s)
    for target, result in outcome.items():
        (logger.info if result.startswith(("HTTP 2", "exit 0")) else logger.warning)(
            "drift alert of %s to %s: %s", alert.get("model"), target, result
        )
    return outcome


def _post_json(url: str, body: str, timeout_s: float) -> int:
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status


async def _run_command(command: list[str], body: str, timeout_s: float) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "SERVE_APP_DRIFT_ALERT": body},
        )
    except OSError as error:
        return f"failed to start: {error}"
    try:
        _, stderr = await asyncio.wait_for(process.communicate(body.encode()), timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        return f"killed after {timeout_s} s"
    tail = stderr.decode(errors="replace").strip()[-300:]
    return f"exit {process.returncode}" + (f": {tail}" if process.returncode and tail else "")
