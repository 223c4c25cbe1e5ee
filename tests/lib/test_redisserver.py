"""The embedded redis-server: lifecycle by pid, password auth, 127.0.0.1 only, file modes."""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from fraud_lib.cli import cli
from fraud_lib.errors import ConfigError
from fraud_lib.pgproc import free_port
from fraud_lib.redisserver import EmbeddedRedis, is_redis_pid, redis_binary


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def test_start_auth_modes_and_stop_by_pid(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, free_port())
    try:
        assert server.start() is True
        assert server.start() is False  # idempotent: already running
        pid = server.pid
        assert pid and server.ping()
        assert _listening_addresses(server.port) == {"127.0.0.1"}
        assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((server.dir / "redis.conf").stat().st_mode) == 0o600
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).ping()
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert "***" in server.display_url and server.password_file.read_text() not in str(
            server.status()
        )
    finally:
        assert server.stop() is True
    assert not is_redis_pid(pid)  # gone (or a zombie its reaper has not collected yet)
    assert server.stop() is False
    assert server.status()["running"] is False


def test_restart_keeps_data_and_a_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, free_port())
    with server:
        redis.Redis.from_url(server.url).rpush("queue", "job")
        pid = server.pid
    server.pid_file.write_text(str(os.getpid()))  # a pid that is not a redis-server
    assert server.pid is None
    with server:
        assert server.pid != pid
        assert redis.Redis.from_url(server.url).lrange("queue", 0, -1) == [b"job"]


def test_a_killed_server_is_started_again(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, free_port())
    with server:
        os.kill(server.pid, signal.SIGKILL)
        assert server.start() is True and server.ping()


def test_missing_binary_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_REDIS_SERVER", "")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(os, "access", lambda *a: False)
    with pytest.raises(ConfigError, match="redis-server not found; install it"):
        redis_binary()


def test_cli_start_status_stop(tmp_path: Path) -> None:
    env = {"FRAUD_STATE_DIR": str(tmp_path), "FRAUD_REDIS_PORT": str(free_port())}
    runner = CliRunner()
    try:
        started = runner.invoke(cli, ["redis", "start"], env=env)
        assert started.exit_code == 0, started.output
        status = runner.invoke(cli, ["redis", "status"], env=env)
        assert "running: True" in status.output and "***" in status.output
        password = (tmp_path / "redis.password").read_text()
        assert password not in started.output + status.output
    finally:
        stopped = runner.invoke(cli, ["redis", "stop"], env=env)
    assert stopped.output.strip() == "stopped"
    external = runner.invoke(cli, ["redis", "status"], env={**env, "FRAUD_REDIS_URL": "redis://h"})
    assert external.exit_code != 0 and "external" in external.output


def test_bad_port_is_refused(tmp_path: Path) -> None:
    env = {"FRAUD_STATE_DIR": str(tmp_path), "FRAUD_REDIS_PORT": "70000"}
    result = CliRunner().invoke(cli, ["redis", "status"], env=env)
    assert result.exit_code != 0 and "FRAUD_REDIS_PORT=70000 is not a TCP port" in result.output
