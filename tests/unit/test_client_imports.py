"""The client and the cluster commands stay light: they import neither the model, the ops, rich, trio nor the daemon."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("appliance.model", "ops", "rich", "trio", "appliance.daemon", "httpx", "fastpath", "appliance.api")


def modules_after(code: str) -> list[str]:
    """The modules loaded in a fresh interpreter after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_the_client_package_imports_only_the_standard_library():
    """appliance.client and its modules load no third-party or Cairn package beyond themselves."""
    modules = modules_after("import appliance.client, appliance.client.jobs")
    ours = [m for m in modules if m.split(".")[0] in ("appliance", "ops", "fastpath", "consensus", "images")]
    assert set(ours) == {"appliance", "appliance.client", "appliance.client.config", "appliance.client.http",
                         "appliance.client.jobs"}
    assert "typer" not in modules and not heavy(modules)


@pytest.mark.parametrize("module", ["instance", "node", "cluster", "job", "user", "group", "tags", "output"])
def test_a_cluster_command_module_imports_nothing_heavy(module):
    """Importing a command module (typer included) loads none of the model, ops, rich, trio or the daemon."""
    assert heavy(modules_after(f"import appliance.cli.{module}")) == []


def test_running_a_cluster_command_imports_nothing_heavy(tmp_path):
    """A whole `cairn cluster master` run (here failing for want of a config) stays light too."""
    code = ("import sys\nfrom appliance.cli import app\n"
            f"try:\n    app(['cluster', 'master', '--config', {str(tmp_path / 'none.toml')!r}])\n"
            "except SystemExit:\n    pass")
    assert heavy(modules_after(code)) == []
