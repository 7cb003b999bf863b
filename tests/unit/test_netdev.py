"""Bridged NICs without a network: tap names, NIC checks, the helper's command line, and the QEMU driver's
NIC options and description. The taps themselves are made in tests/integration/test_qemu_network.py."""

from __future__ import annotations

import errno
import hashlib
import os
import shlex

import pytest

from appliance.drivers import netdev
from appliance.drivers.base import DriverError
from appliance.drivers.qemu import InstanceFiles, build_argv, describe, nic_arguments

SPEC = {"name": "web1.example.com", "memory_mib": 128, "vcpus": 1, "disks": (), "hypervisor": "kvm",
        "nics": ({"mac": "aa:00:00:00:00:01", "mode": "bridged", "link": "br0"},
                 {"mac": "aa:00:00:00:00:02", "mode": "bridged", "link": "xen-br1"})}
ID = "inst-3f2a9b01c4d5e6f708192a3b4c5d6e7f"


def options(argument: str) -> dict[str, str]:
    """A QEMU `key=value,...` option as a dict (no doubled commas in these)."""
    return dict(item.partition("=")[::2] for item in argument.split(","))


# --- tap names ----------------------------------------------------------------------------------


def test_a_tap_name_fits_the_kernel_limit_for_every_nic_index():
    """Tap names are at most 15 characters for NIC indexes 0 to 99, whatever the instance id."""
    for instance in (ID, "i", "x" * 200):
        assert all(len(netdev.tap_name(instance, index)) <= 15 for index in range(100))


def test_a_tap_name_is_the_same_everywhere_and_differs_per_instance_and_nic():
    """The name follows from the instance id and the NIC index alone."""
    assert netdev.tap_name(ID, 0) == netdev.tap_name(ID, 0)
    names = {netdev.tap_name(instance, index) for instance in (ID, "inst-2", "inst-3") for index in range(8)}
    assert len(names) == 24


def test_a_tap_name_says_whose_tap_it_is():
    """`ct`, ten hex digits of the id's sha256, `n` and the index: a valid interface name."""
    name = netdev.tap_name(ID, 7)
    assert name == "ct" + hashlib.sha256(ID.encode()).hexdigest()[:10] + "n7"
    assert netdev.is_interface_name(name)


@pytest.mark.parametrize("index", [-1, 100])
def test_a_nic_index_out_of_range_has_no_tap_name(index):
    """There is no tap name for a negative index or one past 99."""
    with pytest.raises(ValueError, match="at most 100 NICs"):
        netdev.tap_name(ID, index)


@pytest.mark.parametrize("name", ["br0", "xen-br0", "br0.10", "vmbr_lan", "b" * 15])
def test_bridge_names_are_accepted(name):
    """Ordinary bridge names, VLAN suffixes and 15 characters pass."""
    assert netdev.is_interface_name(name)


@pytest.mark.parametrize("name", ["", "b" * 16, "br 0", "br,0", "br/0", "-br", ".", "br0;rm", None, 7])
def test_names_that_cannot_name_an_interface_are_refused(name):
    """Empty, too long, spaces, commas, slashes, a leading dash or dot and non-strings are refused."""
    assert not netdev.is_interface_name(name)


# --- NICs of a spec -----------------------------------------------------------------------------


def test_a_nic_of_the_cluster_keeps_its_mac_mode_and_link():
    """A NIC given as a mapping becomes exactly {mac, mode, link}."""
    assert netdev.nic_of({"mac": "aa:00:00:00:00:01", "mode": "bridged", "link": "br0", "uuid": "x"}) == \
        {"mac": "aa:00:00:00:00:01", "mode": "bridged", "link": "br0"}


def test_a_bare_mac_is_a_nic_without_a_mode():
    """The older spec form (MACs only) says nothing about where the NIC goes: mode and link are empty."""
    assert netdev.nic_of("aa:00:00:00:00:01") == {"mac": "aa:00:00:00:00:01", "mode": "", "link": ""}


def test_a_bridged_nic_with_a_good_mac_and_link_has_no_problem():
    """Nothing keeps a bridged NIC on br0 from being attached."""
    assert netdev.nic_problem(netdev.nic_of(SPEC["nics"][0]), 0) is None


@pytest.mark.parametrize(("nic", "nic_mode", "expected"), [
    ({"mac": "AA-00", "mode": "bridged", "link": "br0"}, "", "has MAC address 'AA-00'"),
    ({"mac": "aa:00:00:00:00:01", "mode": "routed", "link": "10"}, "", "has mode 'routed'"),
    ({"mac": "aa:00:00:00:00:01", "mode": "openvswitch", "link": "sw"}, "", "use mode bridged"),
    ({"mac": "aa:00:00:00:00:01", "mode": "bridged", "link": ""}, "", "has link ''"),
    ({"mac": "aa:00:00:00:00:01", "mode": "bridged", "link": "br0 --x"}, "", "cannot name a bridge"),
    ({"mac": "AA-00", "mode": "bridged", "link": "br0"}, "user", "has MAC address"),
])
def test_a_nic_the_driver_cannot_attach_has_a_problem(nic, nic_mode, expected):
    """A bad MAC, a mode other than bridged, or a link that cannot name a bridge is named, with what to do."""
    problem = netdev.nic_problem(netdev.nic_of(nic), 2, nic_mode)
    assert expected in problem and "cairn instance modify --net 2:" in problem


def test_only_the_mac_matters_under_user_networking_and_nothing_under_none():
    """nic_mode user ignores mode and link; nic_mode none ignores the NICs altogether."""
    routed = {"mac": "aa:00:00:00:00:01", "mode": "routed", "link": ""}
    assert netdev.nic_problem(routed, 0, "user") is None
    assert netdev.nic_problem({"mac": "bad", "mode": "routed", "link": ""}, 0, "none") is None


def test_a_nic_past_the_hundredth_has_a_problem():
    """The 101st NIC is one too many (no tap name for it)."""
    assert "at most 100 NICs" in netdev.nic_problem(netdev.nic_of(SPEC["nics"][0]), 100)


# --- the helper's command line and refusals ---------------------------------------------------


def test_the_helper_command_runs_this_module_isolated_with_tap_and_bridge():
    """QEMU runs it with `sh -c` (it has spaces): python -I -S netdev.py --tap=... --br=..."""
    command = netdev.helper_command("ct0123456789n0", "br0", python="/usr/bin/python3")
    words = shlex.split(command)
    assert words[:3] == ["/usr/bin/python3", "-I", "-S"]
    assert words[3] == os.path.abspath(netdev.__file__)
    assert words[4:] == ["--tap=ct0123456789n0", "--br=br0"]


def test_the_helper_command_quotes_paths_for_the_shell():
    """A python path with a space or a quote reaches the helper intact through `sh -c`."""
    command = netdev.helper_command("t0", "br0", python="/opt/my python/bin/py'3", program="/x y/netdev.py")
    assert shlex.split(command)[0] == "/opt/my python/bin/py'3" and shlex.split(command)[3] == "/x y/netdev.py"


def test_the_helper_reads_the_arguments_qemu_adds():
    """From ours plus QEMU's `--use-vnet --fd=N`: the tap, the bridge, the vnet header and the socket."""
    argv = shlex.split(netdev.helper_command("ct0123456789n0", "br0"))[4:] + ["--use-vnet", "--fd=7"]
    assert netdev.parse_helper_arguments(argv) == ("ct0123456789n0", "br0", True, 7)


def test_the_helper_without_a_socket_says_how_it_is_run(capsys):
    """Run without --fd (not by QEMU), the helper exits 1 with its usage on stderr."""
    assert netdev.main(["--tap=t0", "--br=br0"]) == 1
    assert "cairn netdev: usage: netdev.py --tap=NAME --br=BRIDGE" in capsys.readouterr().err


def test_the_helper_refuses_a_bridge_that_cannot_be_an_interface_name():
    """A bridge name with shell or option characters never reaches an ioctl."""
    with pytest.raises(netdev.NetdevError, match="cannot name a network interface"):
        netdev.parse_helper_arguments(["--tap=t0", "--br=br0;x", "--fd=3"])


@pytest.mark.parametrize(("code", "expected"), [
    (errno.EPERM, "run the node daemon as root (it needs CAP_NET_ADMIN)"),
    (errno.EBUSY, "tap ct1n0 is in use by another process"),
    (errno.EINVAL, "an interface named ct1n0 exists and is not a tap; remove it with 'ip link del ct1n0'"),
])
def test_a_refused_tap_says_why_and_what_to_do(code, expected):
    """The kernel's refusals of TUNSETIFF become messages with the way out."""
    assert expected in netdev._tap_refusal("ct1n0", OSError(code, "refused"))


def test_the_missing_bridge_hint_says_how_to_make_it():
    """The hint names the commands that make the bridge, and the alternative."""
    hint = netdev.bridge_hint("br7")
    assert "ip link add br7 type bridge && ip link set br7 up" in hint and "existing bridge" in hint


# --- the QEMU driver's NICs ---------------------------------------------------------------------


def test_the_description_carries_each_nic_with_mac_mode_and_link():
    """describe keeps the cluster's NICs as {mac, mode, link}, in order."""
    assert describe(ID, SPEC, "tcg")["nics"] == [dict(nic) for nic in SPEC["nics"]]


def test_bridged_nics_are_virtio_net_devices_with_stable_ids_and_the_cluster_macs():
    """NIC i is backend net<i> (a bridge netdev on its link) and device nic<i>, virtio-net-pci with its MAC."""
    arguments = nic_arguments(describe(ID, SPEC, "tcg"))
    assert arguments[0::2] == ["-netdev", "-device", "-netdev", "-device"]
    first, second = options(arguments[1]), options(arguments[5])
    assert arguments[1].startswith("bridge,") and first["id"] == "net0" and first["br"] == "br0"
    assert second["id"] == "net1" and second["br"] == "xen-br1"
    assert arguments[3] == "virtio-net-pci,netdev=net0,mac=aa:00:00:00:00:01,id=nic0"
    assert arguments[7] == "virtio-net-pci,netdev=net1,mac=aa:00:00:00:00:02,id=nic1"


def test_each_bridged_nic_gets_its_tap_from_the_helper():
    """The helper of NIC i makes tap `tap_name(instance, i)` (15 characters at most) on the NIC's bridge."""
    arguments = nic_arguments(describe(ID, SPEC, "tcg"))
    for index, argument in ((0, arguments[1]), (1, arguments[5])):
        words = shlex.split(options(argument)["helper"])
        tap = netdev.tap_name(ID, index)
        assert f"--tap={tap}" in words and len(tap) <= 15
        assert f"--br={SPEC['nics'][index]['link']}" in words


def test_two_nodes_build_the_same_nics_from_one_description(tmp_path):
    """A migration target rebuilds the same NIC options from the source's description."""
    description = describe(ID, SPEC, "tcg")
    here = build_argv(description, InstanceFiles(tmp_path / "a"), "00", [])
    there = build_argv(dict(description), InstanceFiles(tmp_path / "b"), "11", [])
    assert [a for a in here if "virtio-net" in a or a.startswith("bridge,")] == \
        [a for a in there if "virtio-net" in a or a.startswith("bridge,")]
    assert here.count("-netdev") == 2


def test_user_networking_and_none_override_the_nics_modes():
    """hvparam nic_mode user gives every NIC a user backend; none attaches no NIC at all."""
    user = nic_arguments(describe(ID, {**SPEC, "hvparams": {"nic_mode": "user"}}, "tcg"))
    assert user[1] == "user,id=net0" and user[5] == "user,id=net1"
    assert user[3] == "virtio-net-pci,netdev=net0,mac=aa:00:00:00:00:01,id=nic0"
    assert nic_arguments(describe(ID, {**SPEC, "hvparams": {"nic_mode": "none"}}, "tcg")) == []


def test_a_description_of_bare_macs_still_builds():
    """A runtime description of the older form (MACs only, e.g. from a not yet upgraded source) builds, with its
    NICs unattached as before."""
    description = {**describe(ID, {**SPEC, "nics": ()}, "tcg"), "nics": ["aa:00:00:00:00:01"]}
    assert nic_arguments(description) == []


@pytest.mark.parametrize(("nic", "expected"), [
    ({"mac": "aa:00:00:00:00:01", "mode": "routed", "link": "10"},
     "NIC 0 of instance inst-1 has mode 'routed', which the kvm hypervisor does not attach yet"),
    ({"mac": "aa:00:00:00:00:01", "mode": "bridged", "link": "br 0"},
     "NIC 0 of instance inst-1 has link 'br 0', which cannot name a bridge"),
    ({"mac": "aa,00", "mode": "bridged", "link": "br0"}, "NIC 0 of instance inst-1 has MAC address 'aa,00'"),
])
def test_describe_refuses_a_nic_it_cannot_attach(nic, expected):
    """A NIC the driver cannot attach fails the start with a DriverError naming the NIC and the instance."""
    with pytest.raises(DriverError, match=expected.replace("(", r"\(")):
        describe("inst-1", {**SPEC, "nics": (nic,)}, "tcg")


def test_describe_refuses_an_unknown_nic_mode_hvparam():
    """hvparam nic_mode is empty, user or none."""
    with pytest.raises(DriverError, match="hvparam nic_mode of instance inst-1 is 'tap', not 'user' or 'none'"):
        describe("inst-1", {**SPEC, "hvparams": {"nic_mode": "tap"}}, "tcg")
