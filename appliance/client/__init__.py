"""The CLI's client of the cluster API: configuration, a keep-alive HTTPS client with node failover, jobs.

Standard library only, and cheap to import: a `cairn` command that talks to the
cluster must not pay for typer's rich, trio, httpx, the model or the operations.
`tests/unit/test_client_imports.py` holds the package to that.
"""

from appliance.client.config import ConfigError, Target, resolve_target, write_client_config
from appliance.client.http import ApiError, Client, Unreachable

__all__ = ["ApiError", "Client", "ConfigError", "Target", "Unreachable", "resolve_target", "write_client_config"]
