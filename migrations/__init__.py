"""The Alembic environment and the kernel's revisions (shipped as a package so wheels carry them)."""
