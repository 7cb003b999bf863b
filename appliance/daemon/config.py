"""A node's own configuration, `DATA_DIR/node.json`, and the bootstrap jobs of a new cluster.

`node.json` says who this node is and how to reach the first members; it holds
no secret (those live in `DATA_DIR/pki/`, mode 0600). `bootstrap.json` (0600)
is written only on the first node of a new cluster: the jobs its daemon
submits once it leads a log that has no cluster yet (cluster init, then the
first nodes). Each bootstrap job carries a fixed request id, so a daemon that
restarts half-way never submits one twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance import pki

CONFIG_NAME = "node.json"
BOOTSTRAP_NAME = "bootstrap.json"
FSYNC_MODES = ("always", "batch")


class ConfigError(ValueError):
    """A node configuration is missing or wrong; the message names the file and what to do."""


@dataclass(frozen=True)
class NodeConfig:
    name: str
    address: str                         # HOST:PORT of the API; Raft is PORT+1
    cluster: str
    voters: dict = field(default_factory=dict)      # name -> address of the voters this node starts with
    voter: bool = True
    fsync: str = "always"
    memory_mib: int | None = None        # capacity overrides (several nodes sharing one host)
    disk_mib: int | None = None
    cpus: int | None = None
    hypervisor: str = "fake"
    # The fake hypervisor migrates between state dirs on one machine: node name -> its data dir.
    fake_peers: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65533:
            raise ConfigError(f"node address {self.address!r} is not HOST:PORT; write it like 127.0.0.1:7000")
        if self.fsync not in FSYNC_MODES:
            raise ConfigError(f"fsync {self.fsync!r} is not one of {', '.join(FSYNC_MODES)}")
        if self.voter and self.name not in self.voters:
            raise ConfigError(f"voter {self.name} is not in its own voter list {sorted(self.voters)}")

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0]


def write_config(data_dir: Path, config: NodeConfig) -> None:
    path = Path(data_dir) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(config), indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def read_config(data_dir: Path) -> NodeConfig:
    path = Path(data_dir) / CONFIG_NAME
    try:
        plain = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: {data_dir} is not a node's data dir; create one with "
                          "'cairn up' or 'cairn cluster init'") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    try:
        return NodeConfig(**plain)
    except TypeError as error:
        raise ConfigError(f"{path} is not a node configuration: {error}") from None


def write_bootstrap(data_dir: Path, jobs: list[dict]) -> None:
    """The first jobs of a new cluster: [{"request_id", "operations"}] (0600: cluster init holds a token hash)."""
    pki.write_secret_file(Path(data_dir) / BOOTSTRAP_NAME, json.dumps(jobs, sort_keys=True).encode(), overwrite=True)


def read_bootstrap(data_dir: Path) -> list[dict]:
    path = Path(data_dir) / BOOTSTRAP_NAME
    if not path.exists():
        return []
    return json.loads(pki.read_secret_file(path))
