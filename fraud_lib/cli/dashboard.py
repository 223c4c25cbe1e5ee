"""``fraud ui``: the monitoring dashboard (Evidently UI on the project's workspace)."""

from __future__ import annotations

import socket

import click

from fraud_lib.cli.base import _settings, cli, say
from fraud_lib.errors import FraudError

# Evidently's UI reports usage to its vendor unless one of these is set.
NO_TELEMETRY = {"DO_NOT_TRACK": "1", "ITERATIVE_DO_NOT_TRACK": "1"}


def _check_free(host: str, port: int) -> None:
    """Raise FraudError unless ``host:port`` can be bound now."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise FraudError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "choose another --port or --host"
        ) from None


@cli.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8001, show_default=True, type=click.IntRange(1, 65535))
@click.pass_context
def ui(ctx: click.Context, host: str, port: int) -> None:
    """Serve the monitoring dashboard: `evidently ui` on the fraudloop workspace
    (FRAUD_EVIDENTLY_WORKSPACE). Ctrl-C or SIGTERM stops it and everything it started."""
    import os

    from fraud_lib import airflow_local, procs
    from fraud_lib.monitoring import dashboard

    settings = _settings(ctx)
    if len(host) > 255 or not host.strip() or any(c.isspace() or c == "\0" for c in host):
        raise FraudError(f"--host {host[:80]!r} is not a host name or address")
    _check_free(host, port)
    project_id = dashboard.ensure_project(settings)
    exe = airflow_local.console_script("evidently")
    workspace = str(settings.evidently_workspace)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"monitoring dashboard: http://{shown}:{port}/projects/{project_id}")
    say(f"workspace {workspace}; ready in a few seconds; Ctrl-C stops it")
    argv = [exe, "ui", "--workspace", workspace, "--host", host, "--port", str(port)]
    code = procs.run_session(argv, env={**os.environ, **NO_TELEMETRY}, say=say)
    if code != 0:
        raise FraudError(f"evidently ui exited with code {code}")
