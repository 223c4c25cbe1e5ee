"""The ``fraud`` console script: a thin shell over fraud_lib.

The group and its shared helpers live in :mod:`fraud_lib.cli.base`; importing the command
modules (grouped by concern) registers their commands on it. Heavy libraries are imported inside
the commands, so ``fraud --help`` stays fast.
"""

from __future__ import annotations

from fraud_lib.cli import dashboard, data, models, monitor, ops, stack  # noqa: F401  (registers)
from fraud_lib.cli.base import FraudGroup, _settings, cli, dump_json, print_table, say

__all__ = ["FraudGroup", "_settings", "cli", "dump_json", "main", "print_table", "say"]


def main() -> None:
    """Entry point of the ``fraud`` console script."""
    cli(prog_name="fraud")
