"""NICs in Ganeti's bridged mode for the QEMU driver: tap names, NIC checks, and QEMU's bridge helper.

Each NIC of an instance is a tap device on a bridge of the node. Ganeti's per-node bridge is for now
the NIC's `link` (Ganeti's nicparams link, `br0` by default); every node that may run the instance needs
a bridge of that name. The tap's name is derived from the instance id and the NIC's index
(`tap_name`), at most 15 characters, the same on every node.

QEMU makes the taps itself, through its `-netdev bridge` backend with this module as the helper
(`helper_command`): QEMU runs the helper while it builds the machine, the helper creates the tap with
its stable name, sets its MTU to the bridge's, brings it up, adds it to the bridge and hands the open
tap to QEMU over the socket QEMU gave it. The tap is not persistent: it is gone the moment the last
QEMU holding it exits, so a stop, a crash, a kill or a migration away removes it with no cleanup step
(and a destination that never received its machine takes its tap with it). A failure (no such
bridge, a link that is not a bridge, no CAP_NET_ADMIN, a tap of that name in use) is one line on
QEMU's error output, which the driver quotes in its DriverError, and QEMU does not start.

Two nodes in one network namespace (several test nodes on one host) would want the same tap name
for an instance migrating between them: the destination is refused while the source holds the
tap. Real nodes each have their own namespace; instances of such test clusters use hvparam
`nic_mode=none` (no NICs) or `nic_mode=user` (QEMU's user networking, no bridge or tap).

Run as a program (QEMU does that), this module must import nothing but the standard library: it is
started with `python -I -S`, outside the project's environment.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shlex
import socket
import struct
import sys

MAX_INTERFACE_NAME = 15               # IFNAMSIZ is 16 with the final NUL
TAP_PREFIX = "ct"
TAP_DIGEST_CHARS = 10                 # 40 bits of the instance id's sha256
MAX_NIC_INDEX = 99                    # keeps every tap name within MAX_INTERFACE_NAME
BRIDGED, UNATTACHED = "bridged", ""
# hvparam nic_mode of the kvm hypervisor: "" attaches each NIC as the cluster says (its mode and link),
# "user" gives every NIC QEMU's user networking instead (no bridge needed), "none" attaches none.
HVPARAM_NIC_MODES = ("", "user", "none")
INTERFACE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

# Linux ioctls (linux/if_tun.h, linux/sockios.h) and interface flags (linux/if.h).
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCGIFMTU, SIOCSIFMTU = 0x8921, 0x8922
SIOCGIFINDEX = 0x8933
SIOCBRADDIF = 0x89A2
IFF_UP = 0x1
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
IFREQ_BYTES = 40
TUN_DEVICE = "/dev/net/tun"


class NetdevError(Exception):
    """A tap could not be made or attached; the message says what is wrong and what to do."""


# --- pure: names, NIC descriptions, QEMU's arguments -----------------------------------------


def tap_name(instance_id: str, index: int) -> str:
    """The tap of NIC `index` of the instance: `ct` + 10 hex digits of the id's sha256 + `n<index>`.

    At most 15 characters (Linux's limit) for indexes up to 99, and the same on every node: it
    follows from the instance id alone.
    """
    if not 0 <= index <= MAX_NIC_INDEX:
        raise ValueError(f"NIC index {index} is out of range; an instance has at most {MAX_NIC_INDEX + 1} NICs")
    digest = hashlib.sha256(instance_id.encode()).hexdigest()[:TAP_DIGEST_CHARS]
    return f"{TAP_PREFIX}{digest}n{index}"


def is_interface_name(name: object) -> bool:
    """Whether `name` can name a network interface here: 1-15 of letters, digits, '_', '.', '-', not starting with
    '.' or '-' (stricter than Linux, so that it also passes through QEMU's options and a shell unharmed)."""
    return isinstance(name, str) and INTERFACE_NAME.fullmatch(name) is not None


def nic_of(nic) -> dict:
    """A NIC of an instance spec as {"mac", "mode", "link"}: a mapping (the cluster's NIC) or a bare MAC (the
    spec's older form, which says nothing about where the NIC goes, so it stays unattached: mode "")."""
    if isinstance(nic, dict):
        return {"mac": str(nic.get("mac") or ""), "mode": str(nic.get("mode") or ""),
                "link": str(nic.get("link") or "")}
    return {"mac": str(nic), "mode": UNATTACHED, "link": ""}


def nic_problem(nic: dict, index: int, nic_mode: str = "") -> str | None:
    """What keeps the driver from attaching NIC number `index` (from `nic_of`) under hvparam `nic_mode`, as the end
    of a sentence; None if nothing does. NICs are not looked at under nic_mode "none", only their MACs under
    "user"."""
    if nic_mode == "none":
        return None
    if index > MAX_NIC_INDEX:
        return f"is one too many: the kvm hypervisor attaches at most {MAX_NIC_INDEX + 1} NICs; remove some"
    if not MAC.fullmatch(nic["mac"]):
        return (f"has MAC address {nic['mac']!r}, not one like aa:00:00:12:34:56; fix it with "
                f"'cairn instance modify --net {index}:mac=...'")
    if nic_mode == "user" or nic["mode"] == UNATTACHED:
        return None
    if nic["mode"] != BRIDGED:
        return (f"has mode {nic['mode']!r}, which the kvm hypervisor does not attach yet; use mode bridged "
                f"('cairn instance modify --net {index}:mode=bridged,link=BRIDGE')")
    if not is_interface_name(nic["link"]):
        return (f"has link {nic['link']!r}, which cannot name a bridge (1-15 letters, digits, '_', '.' or '-'); "
                f"set it to the node's bridge ('cairn instance modify --net {index}:link=br0')")
    return None


def helper_command(tap: str, bridge: str, python: str = sys.executable, program: str = __file__) -> str:
    """The `helper=` of QEMU's `-netdev bridge` that makes tap `tap` on `bridge` with this module.

    QEMU runs it with `sh -c`, adding `--use-vnet --fd=N` (and no `--br=`, as it is here already).
    """
    return " ".join(shlex.quote(word) for word in (python, "-I", "-S", os.path.abspath(program),
                                                   f"--tap={tap}", f"--br={bridge}"))


def bridge_hint(bridge: str) -> str:
    """How an operator makes a missing bridge."""
    return f"create it with 'ip link add {bridge} type bridge && ip link set {bridge} up' (and add the node's " \
           "uplink to it), or set the NIC's link to an existing bridge"


# --- the helper: make the tap, attach it, hand it to QEMU (Linux ioctls) ---------------------


def _ifreq(name: str, payload: bytes = b"") -> bytearray:
    request = bytearray(IFREQ_BYTES)
    encoded = name.encode()
    request[:len(encoded)] = encoded
    request[16:16 + len(payload)] = payload
    return request


def _ioctl_int(sock: socket.socket, request: int, name: str) -> int:
    """One `struct ifreq` ioctl that reads an int (index, MTU, flags) of interface `name`."""
    buffer = _ifreq(name)
    fcntl.ioctl(sock, request, buffer)
    return struct.unpack_from("i", buffer, 16)[0]


def _ioctl_set_int(sock: socket.socket, request: int, name: str, value: int) -> None:
    fcntl.ioctl(sock, request, _ifreq(name, struct.pack("i", value)))


def bridge_mtu(sock: socket.socket, bridge: str) -> int:
    """The MTU of `bridge`; NetdevError when there is no interface of that name."""
    try:
        _ioctl_int(sock, SIOCGIFINDEX, bridge)
    except OSError as error:
        if error.errno == errno.ENODEV:
            raise NetdevError(f"bridge {bridge} does not exist on this node; {bridge_hint(bridge)}") from None
        raise NetdevError(f"cannot look up bridge {bridge}: {error.strerror}") from None
    return _ioctl_int(sock, SIOCGIFMTU, bridge)


def open_tap(tap: str, vnet_header: bool) -> int:
    """A new, non-persistent tap named `tap`, as an open file descriptor (the tap lives while it is open)."""
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        raise NetdevError(f"cannot open {TUN_DEVICE} to make tap {tap}: {error.strerror}; load the tun module "
                          "('modprobe tun') and run the node daemon as root (it needs CAP_NET_ADMIN)") from None
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_header else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(tap, struct.pack("H", flags)))
        # A persistent tap of that name left by someone else would outlive QEMU; make it go with QEMU.
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    except OSError as error:
        os.close(fd)
        raise NetdevError(_tap_refusal(tap, error)) from None
    return fd


def _tap_refusal(tap: str, error: OSError) -> str:
    if error.errno == errno.EPERM:
        return f"not permitted to make tap {tap}; run the node daemon as root (it needs CAP_NET_ADMIN)"
    if error.errno == errno.EBUSY:
        return (f"tap {tap} is in use by another process (is the instance already running in this network "
                f"namespace?); stop that QEMU or remove the tap with 'ip link del {tap}'")
    if error.errno == errno.EINVAL:
        return f"an interface named {tap} exists and is not a tap; remove it with 'ip link del {tap}'"
    return f"cannot make tap {tap}: {error.strerror}"


def attach(sock: socket.socket, tap: str, bridge: str, mtu: int) -> None:
    """Give the tap the bridge's MTU (a smaller one would lower the bridge's), add it to the bridge, bring it up."""
    try:
        _ioctl_set_int(sock, SIOCSIFMTU, tap, mtu)
        _ioctl_set_int(sock, SIOCBRADDIF, bridge, _ioctl_int(sock, SIOCGIFINDEX, tap))
        _ioctl_set_int(sock, SIOCSIFFLAGS, tap, _ioctl_int(sock, SIOCGIFFLAGS, tap) | IFF_UP)
    except OSError as error:
        if error.errno == errno.EOPNOTSUPP:
            raise NetdevError(f"{bridge} is a network interface but not a bridge; {bridge_hint(bridge)}") from None
        raise NetdevError(f"cannot add tap {tap} to bridge {bridge}: {error.strerror}") from None


def make_tap(tap: str, bridge: str, vnet_header: bool = True) -> int:
    """Tap `tap` on `bridge`, up, as an open file descriptor."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        mtu = bridge_mtu(sock, bridge)
        fd = open_tap(tap, vnet_header)
        try:
            attach(sock, tap, bridge, mtu)
        except BaseException:
            os.close(fd)
            raise
    return fd


def parse_helper_arguments(argv: list[str]) -> tuple[str, str, bool, int]:
    """(tap, bridge, vnet header, socket fd) from the helper's command line (ours plus what QEMU adds)."""
    options = dict(word[2:].partition("=")[::2] for word in argv if word.startswith("--"))
    try:
        tap, bridge, fd = options["tap"], options["br"], int(options["fd"])
    except (KeyError, ValueError):
        raise NetdevError(f"usage: netdev.py --tap=NAME --br=BRIDGE [--use-vnet] --fd=N, not {' '.join(argv)!r}; "
                          "QEMU runs this helper for -netdev bridge") from None
    if not is_interface_name(tap) or not is_interface_name(bridge):
        raise NetdevError(f"tap {tap!r} or bridge {bridge!r} cannot name a network interface")
    return tap, bridge, "use-vnet" in options, fd


def main(argv: list[str]) -> int:
    """QEMU's bridge helper: make the tap, send it over the socket QEMU passed, exit 0; 1 with a message."""
    try:
        tap, bridge, vnet_header, channel = parse_helper_arguments(argv)
        fd = make_tap(tap, bridge, vnet_header)
        with socket.socket(fileno=channel) as qemu:
            socket.send_fds(qemu, [b"\0"], [fd])
        os.close(fd)
    except (NetdevError, OSError) as error:
        message = str(error) if isinstance(error, NetdevError) else f"cannot hand the tap to QEMU: {error}"
        sys.stderr.write(f"cairn netdev: {message}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
