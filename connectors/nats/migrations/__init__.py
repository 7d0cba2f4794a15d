"""Alembic revisions of the nats branch."""
