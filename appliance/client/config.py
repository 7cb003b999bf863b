"""The client configuration (`client.toml`): which nodes to call, the CA to trust, the token to send.

The file holds a bearer token, so it is written with mode 0600 from the moment
it exists and refused when its mode lets anyone else read it. Layout:

    [cluster]
    name = "prod"
    nodes = ["10.0.0.1:7001", "10.0.0.2:7001"]   # API addresses, tried in turn
    ca_cert = '''
    -----BEGIN CERTIFICATE-----
    ...
    '''                                          # or: ca_file = "/path/ca.pem"
    token = "..."                                # CAIRN_TOKEN overrides it
    socket = "/var/lib/cairn/api.sock"           # optional: the local node's socket, tried first

Where the client goes, in order: `--api HOST:PORT` (or `unix:PATH`), the
`CAIRN_API` variable, else the nodes of the config named by `--config`, the
`CAIRN_CONFIG` variable, or `$XDG_CONFIG_HOME/cairn/client.toml`.
"""

from __future__ import annotations

import os
import stat
import tomllib

KEYS = ("name", "nodes", "ca_cert", "ca_file", "token", "socket")
START_HINT = "run 'cairn up' to create a cluster (it writes this file) or pass --config FILE"


class ConfigError(Exception):
    """The client cannot know where or how to call the cluster; the message says what to do."""


class Target:
    """Where and how to call the cluster: API addresses, an optional unix socket, the CA and the token."""

    __slots__ = ("name", "addresses", "socket_path", "ca_pem", "token", "config_path")

    def __init__(self, name: str, addresses: list[str], socket_path: str | None, ca_pem: str | None,
                 token: str, config_path: str | None) -> None:
        self.name, self.addresses, self.socket_path = name, addresses, socket_path
        self.ca_pem, self.token, self.config_path = ca_pem, token, config_path

    def __repr__(self) -> str:  # never the token
        return f"Target(name={self.name!r}, addresses={self.addresses!r}, socket_path={self.socket_path!r})"


def default_config_path(environ=os.environ) -> str:
    """`$XDG_CONFIG_HOME/cairn/client.toml`, with XDG_CONFIG_HOME defaulting to ~/.config."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "cairn", "client.toml")


def split_address(address: str) -> tuple[str, int]:
    """HOST and PORT of `HOST:PORT` (`[v6]:PORT` for IPv6); ValueError saying what a good one looks like."""
    host, colon, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{address}' is not an API address; give HOST:PORT, e.g. 127.0.0.1:7001")
    return host, int(port)


def _check_mode(path: str) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & ~0o600:
        raise ConfigError(f"{path} has mode {mode:04o}, but it holds an API token and must be readable by you "
                          f"alone; run 'chmod 600 {path}'")


def read_client_config(path: str) -> dict:
    """The [cluster] table of a client config, checked, with `ca_pem` read from ca_cert or ca_file."""
    try:
        _check_mode(path)
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as error:
        raise ConfigError(f"cannot read the client config {path}: {error.strerror}; {START_HINT}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML ({error}); fix it or write it again with 'cairn up'") from None
    table = document.get("cluster")
    if not isinstance(table, dict):
        raise ConfigError(f"{path} has no [cluster] table; {START_HINT}")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} in [cluster]; the keys are {', '.join(KEYS)}")
    return _checked(path, table)


def _checked(path: str, table: dict) -> dict:
    for key in ("name", "ca_cert", "ca_file", "token", "socket"):
        if key in table and not isinstance(table[key], str):
            raise ConfigError(f"{path}: [cluster] {key} must be a string")
    nodes = table.get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise ConfigError(f'{path}: [cluster] nodes must be a list of "HOST:PORT" strings')
    for node in nodes:
        try:
            split_address(node)
        except ValueError as error:
            raise ConfigError(f"{path}: [cluster] nodes: {error}") from None
    if not nodes and not table.get("socket"):
        raise ConfigError(f"{path}: [cluster] names no nodes and no socket; add the API addresses to nodes")
    ca_pem = table.get("ca_cert")
    if ca_pem is None and "ca_file" in table:
        ca_file = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(table["ca_file"]))
        try:
            with open(ca_file, encoding="ascii") as f:
                ca_pem = f.read()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read ca_file {ca_file}: {error}; "
                              "give the cluster CA's PEM file") from None
    if nodes and not ca_pem:
        raise ConfigError(f"{path}: [cluster] gives neither ca_cert nor ca_file; the client needs the cluster CA "
                          "to check the nodes' certificates")
    return {"name": table.get("name", ""), "nodes": list(nodes), "ca_pem": ca_pem, "token": table.get("token") or None,
            "socket": table.get("socket") or None}


def resolve_target(api: str | None = None, config: str | None = None, environ=os.environ) -> Target:
    """Where and how to call the cluster, from the options and the environment (see the module docstring)."""
    address = api or environ.get("CAIRN_API") or None
    explicit = config or environ.get("CAIRN_CONFIG") or None
    path = explicit or default_config_path(environ)
    settings = None
    if os.path.exists(path):
        settings = read_client_config(path)
    elif explicit:
        raise ConfigError(f"no client config at {path}; {START_HINT}")
    token = environ.get("CAIRN_TOKEN") or (settings or {}).get("token")
    name = (settings or {}).get("name", "")
    config_path = path if settings is not None else None
    if address:
        target = _address_target(address, settings, path, name, config_path)
    elif settings is None:
        raise ConfigError(f"no cluster to talk to: there is no client config at {path}; {START_HINT}, "
                          "or give --api HOST:PORT")
    else:
        target = Target(name, settings["nodes"], settings["socket"], settings["ca_pem"], "", config_path)
    if not token:
        where = f"the token key of {config_path}" if config_path else "a client config"
        raise ConfigError(f"no API token: set CAIRN_TOKEN or put one in {where}; {START_HINT}")
    target.token = token
    return target


def _address_target(address: str, settings: dict | None, path: str, name: str, config_path: str | None) -> Target:
    if address.startswith("unix:"):
        return Target(name, [], address[len("unix:"):], None, "", config_path)
    try:
        split_address(address)
    except ValueError as error:
        raise ConfigError(f"--api / CAIRN_API: {error}") from None
    ca_pem = (settings or {}).get("ca_pem")
    if not ca_pem:
        raise ConfigError(f"--api {address} needs the cluster CA to check the node's certificate, and there is "
                          f"none at {path}; {START_HINT}")
    return Target(name, [address], None, ca_pem, "", config_path)


def _toml_string(text: str) -> str:
    # A PEM block reads best as a multi-line literal string; anything else is written as a basic string,
    # whose escapes JSON's (with ensure_ascii off) happen to be a subset of.
    if "'''" not in text and all(c == "\n" or " " <= c <= "~" for c in text) and "\n" in text:
        return "'''\n" + text + ("" if text.endswith("\n") else "\n") + "'''"
    import json

    return json.dumps(text, ensure_ascii=False)


def write_client_config(path: str, name: str, nodes: list[str], ca_pem: str, token: str,
                        socket: str | None = None) -> None:
    """Write a client config with mode 0600 from its creation (a private temporary file renamed into place)."""
    for node in nodes:
        split_address(node)
    lines = ["[cluster]", f"name = {_toml_string(name)}",
             "nodes = [" + ", ".join(_toml_string(n) for n in nodes) + "]",
             f"ca_cert = {_toml_string(ca_pem)}", f"token = {_toml_string(token)}"]
    if socket:
        lines.append(f"socket = {_toml_string(socket)}")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # the umask can only narrow the mode; this makes it exactly 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
