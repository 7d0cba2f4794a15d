"""Connections: tenants' stored credentials for connector plugins (``/api/connections``).

``contract`` holds what plugins declare (re-exported by ``kernel.sdk``), ``service`` the sealing,
checking and OAuth 2.0 refresh, ``facade`` ``services.connections``, ``routes`` the HTTP API.
"""
