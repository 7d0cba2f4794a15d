"""Alembic revisions of the slack branch."""
