"""The host name Airflow records for a task instance in the stack (``[core]
hostname_callable``): every stack process runs on one machine, so each Celery worker names
itself through ``FRAUD_STACK_HOSTNAME`` as a container would through its own host name."""

from __future__ import annotations

import os
import socket

HOSTNAME_VARIABLE = "FRAUD_STACK_HOSTNAME"


def stack_hostname() -> str:
    """``FRAUD_STACK_HOSTNAME`` when set, else the machine's fully qualified name."""
    return os.environ.get(HOSTNAME_VARIABLE, "").strip() or socket.getfqdn()
