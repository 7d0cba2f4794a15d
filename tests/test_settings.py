from __future__ import annotations

from pathlib import Path

import pytest

from kernel.settings import SettingsError, load_settings

KEY = "k" * 40


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"BUSINESSOS_DATA_DIR": str(tmp_path), **values}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://localhost/db"),
        ("DATABASE_URL", "postgresql://localhost"),
        ("REDIS_URL", "http://localhost:6379"),
        ("BUSINESSOS_DB_POOL_SIZE", "many"),
        ("BUSINESSOS_DB_POOL_SIZE", "0"),
        ("BUSINESSOS_LOG_LEVEL", "LOUD"),
        ("BUSINESSOS_CORS_ORIGINS", "ftp://example.com"),
        ("BUSINESSOS_SECRET_KEY", "short"),
        ("BUSINESSOS_DB_RUNTIME_ROLE", "Robert'); drop table"),
    ],
)
def test_a_malformed_value_is_refused_naming_the_variable(tmp_path: Path, name: str, value: str) -> None:
    env = {**_env(tmp_path, BUSINESSOS_SECRET_KEY=KEY), name: value}
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert message.startswith(name + ":") and "\n" not in message


def test_an_external_database_needs_an_explicit_secret_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^BUSINESSOS_SECRET_KEY"):
        load_settings(_env(tmp_path, DATABASE_URL="postgresql://u@db.example/app"))


def test_embedded_defaults_keep_one_secret_key_per_data_dir(tmp_path: Path) -> None:
    first = load_settings(_env(tmp_path))
    second = load_settings(_env(tmp_path))
    assert first.embedded_database and first.embedded_redis
    assert first.secret_key == second.secret_key and len(first.secret_key) >= 32
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0


def test_values_are_parsed(tmp_path: Path) -> None:
    settings = load_settings(
        _env(
            tmp_path,
            DATABASE_URL="postgres://u:p@db.example:5433/app",
            REDIS_URL="unix:///tmp/redis.sock",
            BUSINESSOS_SECRET_KEY=KEY,
            BUSINESSOS_PLUGINS="crm, hello,",
            BUSINESSOS_CORS_ORIGINS="https://app.example.com/, http://localhost:3000",
            BUSINESSOS_DB_POOL_SIZE="25",
            BUSINESSOS_LOG_LEVEL="debug",
        )
    )
    assert settings.plugins_allowlist == frozenset({"crm", "hello"})
    assert settings.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert settings.db_pool_size == 25 and settings.log_level == "DEBUG"
    assert not settings.embedded_database and not settings.embedded_redis
    assert load_settings(_env(tmp_path, BUSINESSOS_PLUGINS="*")).plugins_allowlist is None
