"""The client configuration: written private, refused when readable by others, and where the client goes."""

import os
import stat

import pytest

from appliance.client.config import (
    ConfigError, default_config_path, read_client_config, resolve_target, write_client_config,
)

CA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def config(tmp_path, name="c.toml", nodes=("10.0.0.1:7001", "10.0.0.2:7001"), token="from-file", socket=None):
    path = str(tmp_path / name)
    write_client_config(path, "prod", list(nodes), CA, token, socket)
    return path


def test_the_writer_makes_a_file_of_mode_0600_whatever_the_umask(tmp_path):
    """The config file is 0600 even under umask 0, and no temporary file is left beside it."""
    old = os.umask(0)
    try:
        path = config(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["c.toml"]


def test_what_is_written_reads_back(tmp_path):
    """Name, nodes, CA, token and socket survive a write and a read."""
    path = config(tmp_path, socket="/var/lib/cairn/api.sock")
    assert read_client_config(path) == {"name": "prod", "nodes": ["10.0.0.1:7001", "10.0.0.2:7001"], "ca_pem": CA,
                                        "token": "from-file", "socket": "/var/lib/cairn/api.sock"}


def test_a_token_with_quotes_and_backslashes_reads_back(tmp_path):
    """Strings that need escaping in TOML are escaped."""
    path = config(tmp_path, token='a"b\\c')
    assert read_client_config(path)["token"] == 'a"b\\c'


def test_a_config_readable_by_others_is_refused_naming_the_chmod(tmp_path):
    """Mode 0644 is refused with the command that fixes it."""
    path = config(tmp_path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        read_client_config(path)


def test_ca_file_is_read_relative_to_the_config(tmp_path):
    """ca_file names a PEM file, relative to the config's directory."""
    (tmp_path / "ca.pem").write_text(CA)
    path = tmp_path / "c.toml"
    path.write_text('[cluster]\nname = "x"\nnodes = ["127.0.0.1:7001"]\nca_file = "ca.pem"\ntoken = "t"\n')
    path.chmod(0o600)
    assert read_client_config(str(path))["ca_pem"] == CA


def test_an_unknown_key_is_refused_naming_the_known_ones(tmp_path):
    """A typo in [cluster] is an error that lists the keys."""
    path = tmp_path / "c.toml"
    path.write_text('[cluster]\nnodes = ["127.0.0.1:7001"]\nca_cert = "x"\ntokn = "t"\n')
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="unknown key.*tokn.*the keys are"):
        read_client_config(str(path))


def test_a_bad_node_address_is_refused(tmp_path):
    """A node that is not HOST:PORT is refused with an example."""
    with pytest.raises(ValueError, match="HOST:PORT"):
        write_client_config(str(tmp_path / "c.toml"), "x", ["10.0.0.1"], CA, "t")


def test_the_config_nodes_and_token_are_used_without_api(tmp_path):
    """With no --api and no CAIRN_API, the config's nodes, CA and token are the target."""
    target = resolve_target(config=config(tmp_path), environ={})
    assert (target.addresses, target.ca_pem, target.token) == (["10.0.0.1:7001", "10.0.0.2:7001"], CA, "from-file")


def test_api_beats_cairn_api_which_beats_the_config(tmp_path):
    """--api wins over CAIRN_API, which wins over the config's nodes; the CA still comes from the config."""
    path = config(tmp_path)
    env = {"CAIRN_API": "10.9.9.9:7001"}
    assert resolve_target(api="10.8.8.8:7001", config=path, environ=env).addresses == ["10.8.8.8:7001"]
    target = resolve_target(config=path, environ=env)
    assert (target.addresses, target.ca_pem) == (["10.9.9.9:7001"], CA)


def test_cairn_token_overrides_the_config_token(tmp_path):
    """CAIRN_TOKEN replaces the token of the config."""
    assert resolve_target(config=config(tmp_path), environ={"CAIRN_TOKEN": "from-env"}).token == "from-env"


def test_cairn_config_is_used_without_config(tmp_path):
    """CAIRN_CONFIG names the config when --config is not given."""
    path = config(tmp_path, nodes=["10.7.7.7:7001"])
    assert resolve_target(environ={"CAIRN_CONFIG": path}).addresses == ["10.7.7.7:7001"]


def test_the_default_config_is_under_xdg_config_home(tmp_path):
    """Without --config or CAIRN_CONFIG, $XDG_CONFIG_HOME/cairn/client.toml (default ~/.config) is read."""
    assert default_config_path({"XDG_CONFIG_HOME": "/x"}) == "/x/cairn/client.toml"
    assert default_config_path({"HOME": "/home/a"}) == "/home/a/.config/cairn/client.toml"
    (tmp_path / "cairn").mkdir()
    config(tmp_path / "cairn", name="client.toml", nodes=["10.6.6.6:7001"])
    assert resolve_target(environ={"XDG_CONFIG_HOME": str(tmp_path)}).addresses == ["10.6.6.6:7001"]


def test_no_config_tells_the_user_to_run_cairn_up_or_pass_config(tmp_path):
    """Without any config the error says how to get one."""
    with pytest.raises(ConfigError, match="cairn up.*--config"):
        resolve_target(environ={"XDG_CONFIG_HOME": str(tmp_path)})


def test_a_missing_named_config_is_an_error(tmp_path):
    """A --config that does not exist is an error naming it."""
    with pytest.raises(ConfigError, match="no client config at .*nope.toml"):
        resolve_target(config=str(tmp_path / "nope.toml"), environ={})


def test_no_token_anywhere_is_an_error(tmp_path):
    """A config without a token and no CAIRN_TOKEN: the error names both and 'cairn up'."""
    path = config(tmp_path, token="")
    with pytest.raises(ConfigError, match="CAIRN_TOKEN.*cairn up"):
        resolve_target(config=path, environ={})


def test_api_over_tcp_needs_a_ca(tmp_path):
    """--api HOST:PORT without any config has no CA to check the node with: an error, not an unchecked call."""
    with pytest.raises(ConfigError, match="needs the cluster CA"):
        resolve_target(api="127.0.0.1:7001", environ={"XDG_CONFIG_HOME": str(tmp_path), "CAIRN_TOKEN": "t"})


def test_api_unix_socket_needs_no_ca(tmp_path):
    """--api unix:PATH calls the local socket, with the token from CAIRN_TOKEN."""
    target = resolve_target(api="unix:/run/api.sock", environ={"XDG_CONFIG_HOME": str(tmp_path), "CAIRN_TOKEN": "t"})
    assert (target.socket_path, target.addresses, target.token) == ("/run/api.sock", [], "t")


def test_the_target_never_shows_the_token(tmp_path):
    """repr(target) leaves the token out (it ends up in tracebacks and logs)."""
    assert "from-file" not in repr(resolve_target(config=config(tmp_path), environ={}))
