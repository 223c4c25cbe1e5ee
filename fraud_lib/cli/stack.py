"""``fraud stack up|down|status``: the compose topology as local processes (fraud_lib.stack)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from fraud_lib.cli.base import _settings, cli, print_table, say
from fraud_lib.errors import FraudError

if TYPE_CHECKING:
    from fraud_lib.stack import StackPlan

DIR_OPTION = click.option(
    "--dir",
    "stack_dir",
    envvar="FRAUD_STACK_DIR",
    type=click.Path(file_okay=False),
    help="Directory of the stack's services (env FRAUD_STACK_DIR; default FRAUD_STATE_DIR/stack).",
)


def _plan(ctx: click.Context, stack_dir: str | None, free_ports: bool = False) -> StackPlan:
    from fraud_lib.stack import StackPlan

    settings = _settings(ctx)
    base = Path(stack_dir) if stack_dir else settings.state_dir / "stack"
    return StackPlan.create(base, free_ports=free_ports, webhook_url=settings.alert_webhook_url,
                            redis_url=settings.redis_url)  # fmt: skip


@cli.group()
def stack() -> None:
    """Run docker-compose's topology as local processes: Postgres, Redis, MLflow server,
    Airflow on the CeleryExecutor with two workers, two scoring replicas behind nginx,
    Prometheus and Alertmanager, every port on 127.0.0.1."""


@stack.command("up")
@DIR_OPTION
@click.option(
    "--free-ports",
    is_flag=True,
    help="Free ports instead of compose's 8000/8080/5000/9090/9093 (first up only).",
)
@click.pass_context
def stack_up(ctx: click.Context, stack_dir: str | None, free_ports: bool) -> None:
    """Start every service in the background and wait until each serves."""
    from fraud_lib import stack as stack_lib

    plan = _plan(ctx, stack_dir, free_ports)
    seconds = stack_lib.up(plan, say)
    say(f"stack up in {seconds:.0f} s ({plan.base}); `fraud stack down` stops it")
    for name in ("nginx", "airflow-apiserver", "mlflow", "prometheus", "alertmanager"):
        say(f"  {name:18} {plan.url(name)}")
    say(
        f"  Airflow user {stack_lib.plan.ADMIN_USER}, password in {plan.base / 'secrets'}/admin-password"
    )


@stack.command("down")
@DIR_OPTION
@click.pass_context
def stack_down(ctx: click.Context, stack_dir: str | None) -> None:
    """Stop every process of the stack by its recorded pid; fail if any is left."""
    from fraud_lib import stack as stack_lib

    left = stack_lib.down(_plan(ctx, stack_dir), say)
    if left:
        raise FraudError(f"processes still running: {left}")


@stack.command("status")
@DIR_OPTION
@click.pass_context
def stack_status(ctx: click.Context, stack_dir: str | None) -> None:
    """One line per service: running, ready, pid, port."""
    from fraud_lib import stack as stack_lib

    print_table(
        stack_lib.status(_plan(ctx, stack_dir)), ["service", "running", "ready", "pid", "port"]
    )
