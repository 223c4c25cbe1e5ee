"""Finding the machine's PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``) for
:mod:`fraud_lib.pgserver`: no Docker, no download, the packages the OS already has."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from glob import glob
from pathlib import Path

from fraud_lib.errors import DatabaseError

#: Where server binaries live when they are not on PATH; the highest version wins.
SEARCH_GLOBS = [
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # PGDG RPMs
    "/opt/homebrew/opt/postgresql*/bin",  # Homebrew on Apple silicon
    "/usr/local/opt/postgresql*/bin",  # Homebrew on Intel
]
INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`; Fedora: "
    "`dnf install postgresql-server`; macOS: `brew install postgresql@16`), or set "
    "FRAUD_PG_BINDIR to the directory holding initdb and pg_ctl, or set FRAUD_DATABASE_URL "
    "to use an existing database instead"
)


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "pg_ctl"))


def _version_of_path(bindir: Path) -> tuple[int, ...]:
    """(15,) for /usr/lib/postgresql/15/bin, (16,) for .../postgresql@16/bin, () if none."""
    m = re.search(r"(\d+(?:\.\d+)*)", bindir.parent.name)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def _server_major(bindir: Path) -> str | None:
    """Major version of ``bindir/postgres`` ("15"), or None if it cannot be run."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\)\s*(\d+)", out)
    return m.group(1) if m else None


def find_bindir(prefer_major: str | None = None) -> Path:
    """Directory holding ``initdb`` and ``pg_ctl``.

    Order: ``$FRAUD_PG_BINDIR``; ``pg_config --bindir`` (if it has the server binaries); the
    directory of ``initdb`` on PATH; the highest-versioned :data:`SEARCH_GLOBS` match. With
    ``prefer_major`` (an existing cluster's ``PG_VERSION``) the first candidate of that major
    version is returned, since a cluster cannot be started by another major version.
    """
    env = os.environ.get("FRAUD_PG_BINDIR", "").strip()
    if env:
        bindir = Path(env).expanduser()
        if not _has_server_binaries(bindir):
            raise DatabaseError(
                f"FRAUD_PG_BINDIR={env} holds no executable initdb and pg_ctl; point it at the "
                "bin directory of a PostgreSQL server, e.g. /usr/lib/postgresql/16/bin"
            )
        return bindir
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    globbed = [Path(p) for pattern in SEARCH_GLOBS for p in glob(pattern)]
    candidates += sorted(globbed, key=_version_of_path, reverse=True)
    found = [c for c in dict.fromkeys(candidates) if _has_server_binaries(c)]
    if not found:
        raise DatabaseError(f"no PostgreSQL server binaries (initdb, pg_ctl) found: {INSTALL_HINT}")
    if prefer_major is None:
        return found[0]
    for bindir in found:
        if _server_major(bindir) == prefer_major:
            return bindir
    raise DatabaseError(
        f"the embedded database was created by PostgreSQL {prefer_major}, but only "
        f"{', '.join(str(b) for b in found)} is installed; install PostgreSQL {prefer_major} "
        "(or set FRAUD_PG_BINDIR), or remove the state directory's postgres/ to start afresh"
    )
