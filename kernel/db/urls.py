"""Connection URLs: the owner's (migrations) and the runtime role's (the app)."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

from kernel.settings import Settings

__all__ = ["owner_url", "runtime_url"]


def _async(url: str) -> URL:
    return make_url(url).set(drivername="postgresql+asyncpg")


def owner_url(database_url: str) -> URL:
    return _async(database_url)


def runtime_url(settings: Settings, database_url: str) -> URL:
    """The runtime role's URL: ``DATABASE_APP_URL`` when set, else derived from the owner's.

    The derived role is ``BUSINESSOS_DB_RUNTIME_ROLE`` with a password derived from the secret
    key; ``businessos migrate`` creates it and keeps its password in step.
    """
    if settings.database_app_url:
        return _async(settings.database_app_url)
    return owner_url(database_url).set(
        username=settings.runtime_role, password=runtime_password(settings)
    )


def runtime_password(settings: Settings) -> str:
    return settings.derived_secret("database-runtime-role")
