"""Schema migrations: Alembic with one branch per plugin and one shared version table.

The owner connection runs them. Before Alembic runs, the runtime login role is created (or its
password brought in step) and made a member of the runtime group, which owns nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from kernel.ai.retrieval import schema as retrieval_schema
from kernel.db.ddl import RUNTIME_GROUP
from kernel.db.urls import owner_url, runtime_password
from kernel.settings import Settings

__all__ = ["MIGRATIONS_DIR", "alembic_config", "pending_heads", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(plugin_folders: Mapping[str, Path]) -> Config:
    """An Alembic config over the kernel's versions folder and each plugin's."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    locations = [MIGRATIONS_DIR / "kernel" / "versions", *plugin_folders.values()]
    cfg.set_main_option("version_locations", os.pathsep.join(str(p) for p in locations))
    return cfg


def _ensure_runtime_role(conn: Connection, settings: Settings) -> None:
    """Create the runtime login role (or sync its password) and put it in the runtime group."""
    conn.execute(
        text(
            f"""
            DO $$ BEGIN
                CREATE ROLE {RUNTIME_GROUP} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END $$
            """
        )
    )
    database = conn.execute(text("select current_database()")).scalar_one()
    conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO {RUNTIME_GROUP}'))
    if settings.database_app_url:
        # An operator-provided role: we only add it to the group.
        from sqlalchemy.engine import make_url

        user = make_url(settings.database_app_url).username
        conn.execute(text(f'GRANT {RUNTIME_GROUP} TO "{user}"'))
        return
    role, password = settings.runtime_role, runtime_password(settings)
    attributes = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE INHERIT"
    conn.execute(
        text(
            f"""
            DO $$ BEGIN
                CREATE ROLE {role} {attributes} PASSWORD '{password}';
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                ALTER ROLE {role} {attributes} PASSWORD '{password}';
            END $$
            """
        )
    )
    conn.execute(text(f"GRANT {RUNTIME_GROUP} TO {role}"))


def _applied(conn: Connection, script: ScriptDirectory) -> tuple[set[str], set[str]]:
    """Applied heads split into known revisions and those of plugins no longer installed."""
    applied = set(MigrationContext.configure(conn).get_current_heads())
    known = {r.revision for r in script.walk_revisions()}
    return applied & known, applied - known


def _upgrade(conn: Connection, cfg: Config, settings: Settings, plugin_order: list[str]) -> None:
    _ensure_runtime_role(conn, settings)
    conn.commit()
    script = ScriptDirectory.from_config(cfg)
    _, orphans = _applied(conn, script) if _has_version_table(conn) else (set(), set())
    # A plugin that was uninstalled leaves its head in the shared version table, which Alembic
    # cannot place. Set it aside for the upgrade and put it back, so a reinstall resumes there.
    for rev in orphans:
        conn.execute(text("delete from alembic_version where version_num = :v"), {"v": rev})
    conn.commit()
    cfg.attributes["connection"] = conn
    try:
        # The kernel first, then each plugin in dependency order. Branches never point at each
        # other (no depends_on): with one, Alembic keeps only the dependent's row in the shared
        # table, and uninstalling the dependent would then hide how far the dependency had got.
        for target in ["kernel@head", *(f"{plugin}@head" for plugin in plugin_order)]:
            command.upgrade(cfg, target)
            conn.commit()
        # Retrieval tables skipped for want of pgvector are created once it is there.
        retrieval_schema.catch_up(conn)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        for rev in orphans:
            conn.execute(text("insert into alembic_version (version_num) values (:v)"), {"v": rev})
        conn.commit()


def _has_version_table(conn: Connection) -> bool:
    return conn.execute(text("select to_regclass('alembic_version') is not null")).scalar_one()  # type: ignore[no-any-return]


def _pending(conn: Connection, cfg: Config) -> list[str]:
    script = ScriptDirectory.from_config(cfg)
    applied = _applied(conn, script)[0] if _has_version_table(conn) else set()
    # A head is reached when it, or a revision after it, is applied.
    reached: set[str] = set()
    for rev in applied:
        reached.update(r.revision for r in script.iterate_revisions(rev, "base"))
    missing = []
    for head in script.get_heads():
        if head not in reached:
            revision = script.get_revision(head)
            missing.append(next(iter(revision.branch_labels), head) if revision else head)
    return sorted(missing)


async def upgrade(settings: Settings, database_url: str, plugin_folders: Mapping[str, Path]) -> None:
    """Bring every branch to its head: the kernel's, then the plugins' in the order given."""
    cfg = alembic_config(plugin_folders)
    engine = create_async_engine(owner_url(database_url))
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_upgrade, cfg, settings, list(plugin_folders))
            await conn.commit()
    finally:
        await engine.dispose()


async def pending_heads(database_url: str, plugin_folders: Mapping[str, Path]) -> list[str]:
    """Branch labels whose head is not applied yet (empty when the schema is current)."""
    cfg = alembic_config(plugin_folders)
    engine = create_async_engine(owner_url(database_url))
    try:
        async with engine.connect() as conn:
            result: Any = await conn.run_sync(_pending, cfg)
            return list(result)
    finally:
        await engine.dispose()
