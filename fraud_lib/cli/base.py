"""The ``fraud`` click group and the helpers its commands share.

Every command reads :class:`Settings` from the environment; expected failures print one line
``error: ...`` and exit 1, never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import click

from fraud_lib.config import Settings
from fraud_lib.errors import FraudError
from fraud_lib.redact import log_handler, redact


def say(message: str) -> None:
    """Progress output for people, on stderr so stdout stays machine-readable."""
    click.echo(f">> {message}", err=True)


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "-" if value is None else str(value)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
        for i, c in enumerate(columns)
    ]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def one_line(message: str) -> str:
    """``message`` with its lines joined, so an error is always a single ``error:`` line."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def check_directory(path: str | None, option: str) -> None:
    """Raise :class:`FraudError` unless ``path`` (when given) is an existing directory."""
    if path is not None and not Path(path).is_dir():
        what = "is a file" if Path(path).exists() else "does not exist"
        raise FraudError(f"{option} {path} {what}; give an existing directory")


def check_output_file(path: str | Path) -> None:
    """Raise :class:`FraudError` when an output path is a directory (before any long work)."""
    if Path(path).is_dir():
        raise FraudError(f"{path} is a directory; give a file name for the output")


class FraudGroup(click.Group):
    """A click group that turns expected errors into one clean line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FraudError as exc:
            click.echo(f"error: {redact(one_line(str(exc)))}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=FraudGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """fraudloop: keep a card-fraud model honest in production.

    Configuration comes from FRAUD_* environment variables (see the README table);
    with none set, everything runs locally under ./.fraudloop (embedded Postgres,
    SQLite MLflow store).
    """
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(
        level=level, handlers=[log_handler("%(asctime)s %(levelname)s %(name)s: %(message)s")]
    )
    for noisy in ("mlflow", "alembic", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
    ctx.obj = {"settings": Settings.from_env()}


def dump_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as strict JSON (NaN/inf become null), creating parent directories."""
    from fraud_lib.drift import json_safe

    p = Path(path)
    check_output_file(p)
    clean = json_safe(json.loads(json.dumps(payload, default=str)))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise FraudError(f"{p} cannot be written: {exc.strerror or exc}") from None


def _engine(settings: Settings) -> Any:
    from fraud_lib import store

    return store.connect_store(settings)
