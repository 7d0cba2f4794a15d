from __future__ import annotations

from sqlalchemy import Text
from sqlalchemy.orm import Mapped, mapped_column

from kernel import sdk


class Base(sdk.Model):
    """The plugin's declarative base: its own MetaData, returned by ``businessos_metadata``."""


class Ping(sdk.TenantScoped, Base):
    __tablename__ = "hello_pings"

    message: Mapped[str] = mapped_column(Text)
