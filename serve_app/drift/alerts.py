"""Drift alerts: a webhook and a command, each bounded by one deadline; what happened is returned.
The command gets the alert on stdin and a minimal environment (never the server's secrets); the
webhook follows no redirect (a 3xx is a failed delivery, not a hop to somewhere else)."""

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
            call = asyncio.to_thread(_post_json, settings.webhook_url, body, settings.timeout_s)
            status = await asyncio.wait_for(call, settings.timeout_s)  # the socket's timeout is per read
            outcome["webhook"] = f"HTTP {status}"
        except asyncio.TimeoutError:
            outcome["webhook"] = f"failed: no answer within {settings.timeout_s} s"
        except Exception as error:
            outcome["webhook"] = f"failed: {type(error).__name__}: {error}"
    if settings.command:
        outcome["command"] = await _run_command(settings.command, body, settings.timeout_s, settings.pass_env)
    for target, result in outcome.items():
        (logger.info if result.startswith(("HTTP 2", "exit 0")) else logger.warning)(
            "drift alert of %s to %s: %s", alert.get("model"), target, result
        )
    return outcome


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects)
COMMAND_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV")
"""What an alert command gets of the monitor's environment, beyond AlertSettings.pass_env."""


def _post_json(url: str, body: str, timeout_s: float) -> int:
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"}, method="POST")
    with _OPENER.open(request, timeout=timeout_s) as response:
        return response.status


def command_env(pass_env: list[str]) -> dict[str, str]:
    return {name: os.environ[name] for name in (*COMMAND_ENV, *pass_env) if name in os.environ}


async def _run_command(command: list[str], body: str, timeout_s: float, pass_env: list[str]) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=command_env(pass_env),
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
