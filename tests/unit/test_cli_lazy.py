"""A command builds only its own command group: `cairn instance ...` never imports the other groups."""

import subprocess
import sys

PROBE = """
import sys
sys.argv = ["cairn", "instance", "list", "--help"]
from appliance.cli import main
try:
    main()
except SystemExit:
    pass
print(",".join(sorted(m for m in sys.modules if m.startswith("appliance.cli."))))
"""


def test_a_group_command_imports_only_its_group():
    """instance list --help loads the instance module (and what it needs), not tags, user, group or local."""
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(result.stdout.strip().splitlines()[-1].split(","))
    assert "appliance.cli.instance" in loaded
    assert not loaded & {"appliance.cli.tags", "appliance.cli.user", "appliance.cli.group", "appliance.cli.local",
                         "appliance.cli.events"}
    assert "Usage: cairn instance list" in result.stdout
