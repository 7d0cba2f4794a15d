"""The connectors' tests run on the plugin test kit, as a third party's connector tests would
(each connector's ``tests/conftest.py`` picks its plugins and settings). The kit is loaded here,
once for every connector: pytest takes ``pytest_plugins`` only from a top-level conftest."""

pytest_plugins = ["kernel.testing"]
