"""The QEMU driver's pieces that need no QEMU: the QMP client against a fake monitor, the argv builder,
the accelerator decision, the runtime file and the driver's refusals before it would start a process.

The fake monitor is a unix socket server in the test that greets like QEMU 7.2 and answers each
command from a script; the processes tier lives in tests/contract/test_drivers_qemu.py.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import trio

from appliance.drivers import qmp
from appliance.drivers.base import CRASHED, DriverError
from appliance.drivers.qemu import (DEFAULT_MIGRATION_BANDWIDTH_MIB_S, DESCRIPTION_KEYS, MACHINE_TYPE,
                                    InstanceFiles, QemuHypervisor, build_argv, canonical_json, checked_id,
                                    choose_accel, describe, migration_parameters, migration_uri, nic_arguments,
                                    probe_kvm, read_runtime, write_atomically)

GREETING = {"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}
SPEC = {"name": "web1.example.com", "memory_mib": 128, "vcpus": 2, "disks": (), "nics": (), "hypervisor": "kvm"}


# --- the QMP client against a fake monitor --------------------------------------------------


def reply(message: dict, value=None) -> dict:
    return {"return": {} if value is None else value, "id": message["id"]}


def event(name: str, **data) -> dict:
    return {"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 0}}


async def serve_one(listener, respond, received: list, greet: bool) -> None:
    """Serve one connection: greet, then answer each message with what `respond(message)` lists, in order
    (a dict is sent, a float is a pause in seconds, "close" ends the connection)."""
    sock, _ = await listener.accept()
    async with trio.SocketStream(sock) as stream:
        if greet:
            await stream.send_all(json.dumps(GREETING).encode() + b"\r\n")
        buffer = b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                message = json.loads(raw)
                received.append(message)
                answers = [reply(message)] if message["execute"] == "qmp_capabilities" else respond(message)
                for answer in answers:
                    if answer == "close":
                        return
                    if isinstance(answer, float):
                        await trio.sleep(answer)
                    else:
                        await stream.send_all(json.dumps(answer).encode() + b"\r\n")


@contextlib.asynccontextmanager
async def fake_monitor(tmp_path, respond=lambda message: [reply(message)], greet=True):
    """A fake QEMU monitor at tmp_path/qmp.sock; yields (path, the messages it received)."""
    path = tmp_path / "qmp.sock"
    received: list[dict] = []
    with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM) as listener:
        await listener.bind(str(path))
        listener.listen()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one, listener, respond, received, greet)
            yield path, received
            nursery.cancel_scope.cancel()


async def test_connect_negotiates_and_execute_returns_the_return_value(tmp_path):
    """connect reads the greeting and sends qmp_capabilities; execute returns QEMU's `return`."""
    def respond(message):
        return [reply(message, {"status": "running", "running": True})]

    async with fake_monitor(tmp_path, respond) as (path, received):
        async with await qmp.connect(path, 1) as monitor:
            assert monitor.greeting["version"]["qemu"]["major"] == 7
            assert (await monitor.execute("query-status"))["status"] == "running"
    assert [m["execute"] for m in received] == ["qmp_capabilities", "query-status"]


async def test_an_error_reply_raises_qmp_error_and_the_monitor_stays_usable(tmp_path):
    """An error reply becomes QmpError with QEMU's class and description; the next command still works."""
    def respond(message):
        if message["execute"] == "nonsense":
            return [{"error": {"class": "CommandNotFound", "desc": "The command nonsense has not been found"},
                     "id": message["id"]}]
        return [reply(message, 42)]

    async with fake_monitor(tmp_path, respond) as (path, _):
        async with await qmp.connect(path, 1) as monitor:
            with pytest.raises(qmp.QmpError) as raised:
                await monitor.execute("nonsense", {"x": 1})
            assert raised.value.error_class == "CommandNotFound"
            assert "has not been found" in raised.value.desc
            assert await monitor.execute("query-something") == 42


async def test_events_between_replies_are_kept_for_wait_event(tmp_path):
    """Events that arrive before a reply are kept; wait_event returns them without reading more."""
    def respond(message):
        return [event("STOP"), event("MIGRATION", status="setup"), reply(message, "done")]

    async with fake_monitor(tmp_path, respond) as (path, _):
        async with await qmp.connect(path, 1) as monitor:
            assert await monitor.execute("migrate", {"uri": "tcp:127.0.0.1:1"}) == "done"
            assert (await monitor.wait_event("MIGRATION", 0.01))["data"] == {"status": "setup"}
            assert [e["event"] for e in monitor.take_events()] == ["STOP"]
            assert monitor.take_events() == []


async def test_wait_event_reads_events_that_come_later_and_applies_the_predicate(tmp_path):
    """wait_event reads on until an event matches its predicate, keeping the others."""
    def respond(message):
        return [reply(message), 0.05, event("MIGRATION", status="active"), 0.05, event("MIGRATION", status="completed")]

    async with fake_monitor(tmp_path, respond) as (path, _):
        async with await qmp.connect(path, 1) as monitor:
            await monitor.execute("migrate")
            found = await monitor.wait_event("MIGRATION", 2, lambda e: e["data"]["status"] == "completed")
            assert found["data"]["status"] == "completed"
            assert [e["data"]["status"] for e in monitor.take_events("MIGRATION")] == ["active"]


async def test_a_reply_with_another_id_is_not_taken_for_this_command(tmp_path):
    """Only the reply carrying this command's id answers it."""
    def respond(message):
        return [{"return": "stale", "id": "someone-else"}, reply(message, "mine")]

    async with fake_monitor(tmp_path, respond) as (path, _):
        async with await qmp.connect(path, 1) as monitor:
            assert await monitor.execute("query-status") == "mine"


async def test_a_command_without_a_reply_times_out_and_closes_the_monitor(tmp_path):
    """No reply within the timeout: QmpTimeout, the monitor is blocked and closed, later calls fail at once."""
    async with fake_monitor(tmp_path, lambda message: []) as (path, _):
        monitor = await qmp.connect(path, 1)
        with pytest.raises(qmp.QmpTimeout):
            await monitor.execute("block-job-cancel", {"device": "rep0", "force": True}, timeout_s=0.1)
        assert monitor.blocked and monitor.closed
        start = trio.current_time()
        with pytest.raises(qmp.QmpClosed):
            await monitor.execute("query-status", timeout_s=5)
        with pytest.raises(qmp.QmpClosed):
            await monitor.wait_event("STOP", 5)
        assert trio.current_time() - start < 0.5


async def test_a_wait_event_that_times_out_leaves_the_monitor_usable(tmp_path):
    """Waiting for an event owes no reply, so its timeout does not close the monitor."""
    async with fake_monitor(tmp_path) as (path, _):
        async with await qmp.connect(path, 1) as monitor:
            with pytest.raises(qmp.QmpTimeout):
                await monitor.wait_event("SHUTDOWN", 0.05)
            assert not monitor.closed
            assert await monitor.execute("query-status") == {}


async def test_connect_times_out_when_qemu_does_not_greet(tmp_path):
    """A monitor that accepts the connection but never greets makes connect raise QmpTimeout."""
    async with fake_monitor(tmp_path, greet=False) as (path, _):
        with pytest.raises(qmp.QmpTimeout):
            await qmp.connect(path, 0.1)


async def test_connect_to_a_missing_socket_raises_qmp_closed(tmp_path):
    """Nothing listening: QmpClosed, with the path in the message."""
    with pytest.raises(qmp.QmpClosed, match="qmp.sock"):
        await qmp.connect(tmp_path / "qmp.sock", 1)


async def test_a_connection_closed_by_qemu_raises_qmp_closed(tmp_path):
    """QEMU going away in the middle of a command is QmpClosed, not a hang."""
    async with fake_monitor(tmp_path, lambda message: ["close"]) as (path, _):
        monitor = await qmp.connect(path, 1)
        with pytest.raises(qmp.QmpClosed):
            await monitor.execute("quit", timeout_s=5)
        assert monitor.closed and not monitor.blocked


async def test_concurrent_commands_take_turns_on_one_monitor(tmp_path):
    """Two tasks sharing a monitor each get their own reply, one command at a time."""
    def respond(message):
        return [0.02, reply(message, message["execute"])]

    async with fake_monitor(tmp_path, respond) as (path, _):
        async with await qmp.connect(path, 1) as monitor:
            answers = {}

            async def run(command):
                answers[command] = await monitor.execute(command, timeout_s=2)

            async with trio.open_nursery() as nursery:
                for command in ("query-status", "query-migrate", "query-name"):
                    nursery.start_soon(run, command)
            assert answers == {c: c for c in ("query-status", "query-migrate", "query-name")}


# --- the argv builder and the description --------------------------------------------------


def files(tmp_path) -> InstanceFiles:
    return InstanceFiles(tmp_path / "instances" / "inst-1")


def argv_for(tmp_path, spec=SPEC, disks=(), incoming=False, token="ab12") -> list[str]:
    return build_argv(describe("inst-1", spec, "tcg"), files(tmp_path), token, disks, incoming=incoming)


def option(argv: list[str], name: str) -> list[str]:
    """Every value given to option `name`."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


def test_the_argv_pins_the_machine_and_has_no_defaults(tmp_path):
    """The argv pins the machine type and memory, and starts from no default devices or config."""
    argv = argv_for(tmp_path)
    assert option(argv, "-machine") == [MACHINE_TYPE] == ["pc-i440fx-7.2"]
    assert option(argv, "-m") == ["128"] and option(argv, "-smp") == ["2"] and option(argv, "-accel") == ["tcg"]
    for flag in ("-nodefaults", "-no-user-config", "-no-shutdown", "-daemonize"):
        assert flag in argv
    assert option(argv, "-display") == ["none"]
    assert "-incoming" not in argv


def test_the_argv_names_the_machine_after_the_instance_id(tmp_path):
    """-name is the instance id, which can hold neither '=' nor ',' (trap 7.5)."""
    assert option(argv_for(tmp_path), "-name") == ["inst-1"]
    for bad in ("idle-tick=0", "a,b", "", "-x"):
        with pytest.raises(DriverError):
            checked_id(bad)


def test_the_argv_carries_the_run_token_and_the_instance_files(tmp_path):
    """The token rides on an inert secret object; QMP, both serial ports and the console log use the entry's files."""
    argv = argv_for(tmp_path, token="feedface")
    entry = files(tmp_path).directory
    assert "secret,id=cairn-run,data=feedface" in option(argv, "-object")
    chardevs = option(argv, "-chardev")
    assert f"socket,id=qmp,path={entry}/qmp.sock,server=on,wait=off" in chardevs
    assert (f"socket,id=console,path={entry}/console.sock,server=on,wait=off,"
            f"logfile={entry}/console.log,logappend=on") in chardevs
    assert f"socket,id=control,path={entry}/ctl.sock,server=on,wait=off" in chardevs
    assert option(argv, "-mon") == ["chardev=qmp,mode=control"]
    assert option(argv, "-device") == ["isa-serial,id=serial0,chardev=console,index=0",
                                       "isa-serial,id=serial1,chardev=control,index=1"]
    assert option(argv, "-pidfile") == [f"{entry}/qemu.pid"]


def test_disks_are_raw_files_on_virtio_blk_with_stable_names(tmp_path):
    """Disk i is block nodes disk<i>-file and disk<i> and device vblk<i>."""
    disks = [tmp_path / "d" / "disk0.raw", tmp_path / "d" / "disk1.raw"]
    argv = argv_for(tmp_path, {**SPEC, "disks": (10, 20), "disk_template": "file"}, disks)
    assert option(argv, "-blockdev") == [
        f"driver=file,node-name=disk0-file,filename={disks[0]}", "driver=raw,node-name=disk0,file=disk0-file",
        f"driver=file,node-name=disk1-file,filename={disks[1]}", "driver=raw,node-name=disk1,file=disk1-file"]
    assert option(argv, "-device")[2:] == ["virtio-blk-pci,drive=disk0,id=vblk0", "virtio-blk-pci,drive=disk1,id=vblk1"]


def test_a_comma_in_a_path_is_doubled(tmp_path):
    """QEMU reads ',,' as a comma inside an option value."""
    argv = argv_for(tmp_path, {**SPEC, "disks": (1,), "disk_template": "file"}, [tmp_path / "a,b.raw"])
    assert f"driver=file,node-name=disk0-file,filename={tmp_path}/a,,b.raw" in option(argv, "-blockdev")


def test_a_kernel_in_hvparams_boots_directly(tmp_path):
    """kernel_path, initrd_path and kernel_args (Ganeti's names) become -kernel, -initrd and -append."""
    hvparams = {"kernel_path": "/boot/vmlinuz", "initrd_path": "/boot/initrd.gz", "kernel_args": "console=ttyS0 quiet"}
    argv = argv_for(tmp_path, {**SPEC, "hvparams": hvparams})
    assert option(argv, "-kernel") == ["/boot/vmlinuz"]
    assert option(argv, "-initrd") == ["/boot/initrd.gz"]
    assert option(argv, "-append") == ["console=ttyS0 quiet"]


def test_an_initrd_without_a_kernel_is_ignored(tmp_path):
    """Without kernel_path the machine boots from its disks; initrd_path and kernel_args are not used."""
    argv = argv_for(tmp_path, {**SPEC, "hvparams": {"initrd_path": "/boot/initrd.gz", "kernel_args": "ro"}})
    assert "-kernel" not in argv and "-initrd" not in argv and "-append" not in argv


def test_a_migration_target_waits_for_an_incoming_migration(tmp_path):
    """The target's argv is the source's plus -incoming defer."""
    source = argv_for(tmp_path)
    target = argv_for(tmp_path, incoming=True)
    assert target == [*source, "-incoming", "defer"]


def test_nics_are_not_attached_unless_nic_mode_says_user(tmp_path):
    """No NIC options by default (no tap networking yet); nic_mode user gives user-mode virtio NICs."""
    with_nics = {**SPEC, "nics": ("aa:00:00:00:00:01", "aa:00:00:00:00:02")}
    assert nic_arguments(describe("inst-1", with_nics, "tcg")) == []
    assert "-netdev" not in argv_for(tmp_path, with_nics)
    user = describe("inst-1", {**with_nics, "hvparams": {"nic_mode": "user"}}, "tcg")
    assert nic_arguments(user) == [
        "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,mac=aa:00:00:00:00:01,id=nic0",
        "-netdev", "user,id=net1", "-device", "virtio-net-pci,netdev=net1,mac=aa:00:00:00:00:02,id=nic1"]


def test_the_description_has_exactly_the_keys_a_target_checks():
    """A description carries every key of DESCRIPTION_KEYS and nothing else."""
    assert sorted(describe("inst-1", SPEC, "tcg")) == sorted(DESCRIPTION_KEYS)


def test_the_description_defaults_to_an_uncapped_migration():
    """Without hvparams: 10 GiB/s bandwidth, QEMU's own downtime limit; the uuid follows from the instance id."""
    description = describe("inst-1", SPEC, "tcg")
    assert description["migration_bandwidth_mib_s"] == DEFAULT_MIGRATION_BANDWIDTH_MIB_S == 10240
    assert description["migration_downtime_ms"] is None
    assert description["uuid"] == describe("inst-1", {**SPEC, "memory_mib": 256}, "tcg")["uuid"]
    assert description["uuid"] != describe("inst-2", SPEC, "tcg")["uuid"]


def test_migration_hvparams_become_qemu_parameters():
    """migration_bandwidth (MiB/s) and migration_downtime (ms) reach migrate-set-parameters, TLS by its object."""
    description = describe("inst-1", {**SPEC, "hvparams": {"migration_bandwidth": 32, "migration_downtime": 50}}, "tcg")
    assert migration_parameters(description, tls=False) == {
        "max-bandwidth": 32 * 1024 * 1024, "downtime-limit": 50, "tls-creds": ""}
    assert migration_parameters(describe("inst-1", SPEC, "tcg"), tls=True) == {
        "max-bandwidth": 10240 * 1024 * 1024, "tls-creds": "cairn-migration-tls"}


@pytest.mark.parametrize(("change", "word"), [
    ({"memory_mib": 0}, "memory_mib"),
    ({"memory_mib": "lots"}, "memory_mib"),
    ({"vcpus": -1}, "vcpus"),
    ({"disks": (0,)}, "disk 0"),
    ({"hvparams": {"kernel_path": "vmlinuz"}}, "kernel_path"),
    ({"hvparams": {"migration_bandwidth": 0}}, "migration_bandwidth"),
    ({"hvparams": ["kernel_path"]}, "hvparams"),
])
def test_a_spec_the_driver_cannot_build_is_refused(change, word):
    """Nonsense in the spec is a DriverError naming the field."""
    with pytest.raises(DriverError, match=word):
        describe("inst-1", {**SPEC, **change}, "tcg")


def test_migration_uris_bracket_ipv6_hosts():
    """An IPv6 listener address is written in brackets."""
    assert migration_uri("127.0.0.1", 4444) == "tcp:127.0.0.1:4444"
    assert migration_uri("::1", "4444") == "tcp:[::1]:4444"


# --- the runtime file ----------------------------------------------------------------------


def test_the_runtime_file_rebuilds_the_same_argv(tmp_path):
    """The persisted description (canonical JSON) rebuilds exactly the persisted argv."""
    entry = files(tmp_path)
    entry.directory.mkdir(parents=True)
    spec = {**SPEC, "disks": (5,), "disk_template": "file", "hvparams": {"migration_downtime": 40}}
    description = describe("inst-1", spec, "tcg")
    argv = build_argv(description, entry, "t0k3n", [tmp_path / "disk0.raw"])
    write_atomically(entry.runtime, canonical_json({"argv": argv, "description": description}) + "\n")
    runtime = read_runtime(entry, "inst-1")
    assert runtime["description"] == description
    assert build_argv(runtime["description"], entry, "t0k3n", [tmp_path / "disk0.raw"]) == argv == runtime["argv"]
    assert entry.runtime.read_text() == canonical_json(runtime) + "\n"


def test_a_damaged_runtime_file_is_a_driver_error(tmp_path):
    """A runtime file that cannot be read says which file and what to do."""
    entry = files(tmp_path)
    entry.directory.mkdir(parents=True)
    entry.runtime.write_text("{not json")
    with pytest.raises(DriverError, match="runtime.json"):
        read_runtime(entry, "inst-1")


# --- the accelerator -------------------------------------------------------------------------


@pytest.mark.parametrize(("opens", "irqchip", "pvm", "expected"), [
    (True, 1, False, "kvm"),
    (True, 0, False, "tcg"),        # KVM without an in-kernel irqchip
    (True, 1, True, "tcg"),         # the paravirtual kvm_pvm module: accepted, then crawls (reference 2.1)
    (False, 0, False, "tcg"),       # no /dev/kvm, or it does not open
])
def test_auto_picks_kvm_only_where_it_really_works(opens, irqchip, pvm, expected):
    """auto takes KVM only if /dev/kvm opens, KVM_CAP_IRQCHIP > 0 and kvm_pvm is absent."""
    assert choose_accel("auto", opens, irqchip, pvm) == expected


def test_an_explicit_accelerator_is_used_as_given():
    """kvm and tcg are taken as asked; anything else is refused."""
    assert choose_accel("kvm", False, 0, True) == "kvm"
    assert choose_accel("tcg", True, 1, False) == "tcg"
    with pytest.raises(DriverError, match="hvf"):
        choose_accel("hvf", True, 1, False)


def test_the_probe_reads_the_device_and_the_module_list(tmp_path):
    """A missing device does not open; a kvm_pvm entry under /sys/module is seen."""
    (tmp_path / "kvm_pvm").mkdir()
    assert probe_kvm(str(tmp_path / "no-kvm"), tmp_path) == (False, 0, True)
    assert probe_kvm(str(tmp_path / "no-kvm"), tmp_path / "empty") == (False, 0, False)


@pytest.mark.skipif(not Path("/sys/module/kvm_pvm").exists(), reason="only on a host with the paravirtual KVM")
def test_a_pvm_host_runs_guests_under_tcg(tmp_path):
    """On a host whose /dev/kvm is PVM (like the CI machines) auto chooses TCG."""
    assert QemuHypervisor(tmp_path / "hv", "node1").accel == "tcg"


# --- the driver's refusals before any process -----------------------------------------------


def driver(tmp_path, **options) -> QemuHypervisor:
    return QemuHypervisor(tmp_path / "hv", "node1", tmp_path / "disks", accel="tcg", **options)


async def test_a_missing_disk_file_is_a_driver_error_naming_it(tmp_path):
    """Starting an instance whose disk file is missing names the file and leaves nothing behind."""
    hypervisor = driver(tmp_path)
    with pytest.raises(DriverError, match=str(tmp_path / "disks" / "inst-1" / "disk0.raw")):
        await hypervisor.start("inst-1", {**SPEC, "disks": (1,), "disk_template": "file"})
    assert await hypervisor.list() == {}


async def test_a_missing_kernel_is_a_driver_error_naming_it(tmp_path):
    """Direct kernel boot from a kernel that is not on this node names the file."""
    with pytest.raises(DriverError, match="/nonexistent/vmlinuz"):
        await driver(tmp_path).start("inst-1", {**SPEC, "hvparams": {"kernel_path": "/nonexistent/vmlinuz"}})


async def test_a_template_without_files_is_refused(tmp_path):
    """Disk templates the driver cannot attach yet are refused by name."""
    with pytest.raises(DriverError, match="sharedfile"):
        await driver(tmp_path).start("inst-1", {**SPEC, "disks": (1,), "disk_template": "sharedfile"})


async def test_a_missing_qemu_binary_is_a_driver_error(tmp_path):
    """A QEMU binary that does not exist says to install it; no entry or staging dir is left."""
    hypervisor = driver(tmp_path, qemu_binary=str(tmp_path / "no-qemu"))
    with pytest.raises(DriverError, match="install"):
        await hypervisor.start("inst-1", SPEC)
    assert list(hypervisor.instances.iterdir()) == []


async def test_a_qemu_that_exits_at_once_is_a_driver_error(tmp_path):
    """A QEMU that fails to start is reported with its exit status; nothing is left behind."""
    hypervisor = driver(tmp_path, qemu_binary="/bin/false")
    with pytest.raises(DriverError, match="did not start"):
        await hypervisor.start("inst-1", SPEC)
    assert list(hypervisor.instances.iterdir()) == []


async def test_stopping_an_unknown_instance_is_no_error(tmp_path):
    """stop of an instance that was never here does nothing."""
    hypervisor = driver(tmp_path)
    await hypervisor.stop("inst-1", 1)
    assert await hypervisor.list() == {}


def dead_entry(hypervisor: QemuHypervisor, instance_id: str) -> InstanceFiles:
    """An entry whose recorded process has exited (a pid above any pid_max never runs)."""
    entry = hypervisor.files(instance_id)
    entry.directory.mkdir(parents=True)
    entry.pid.write_text("999999999 0123abcd\n")
    return entry


async def test_an_entry_whose_process_is_gone_is_listed_crashed(tmp_path):
    """A recorded QEMU that no longer runs, with no stop asked, is a crash."""
    hypervisor = driver(tmp_path)
    dead_entry(hypervisor, "inst-1")
    assert await hypervisor.list() == {"inst-1": CRASHED}


async def test_an_entry_a_stop_had_ended_is_dropped(tmp_path):
    """A process ended by a stop that did not finish (the driver died) is cleared, not reported."""
    hypervisor = driver(tmp_path)
    dead_entry(hypervisor, "inst-1").stopping.touch()
    assert await hypervisor.list() == {}
    assert not hypervisor.files("inst-1").directory.exists()


async def test_migrating_an_instance_not_running_here_is_refused(tmp_path):
    """Only a running instance migrates."""
    hypervisor = driver(tmp_path)
    with pytest.raises(DriverError, match="not running"):
        await hypervisor.migrate("inst-1", "node2")


async def test_an_incoming_migration_from_another_accelerator_is_refused(tmp_path):
    """A TCG node refuses a machine that runs under KVM on its source (and a description it cannot read)."""
    hypervisor = driver(tmp_path)
    with pytest.raises(DriverError, match="kvm"):
        await hypervisor.accept_incoming("inst-1", describe("inst-1", SPEC, "kvm"))
    with pytest.raises(DriverError, match="format"):
        await hypervisor.accept_incoming("inst-1", {"instance": "inst-1"})
    assert await hypervisor.list() == {}


async def test_aborting_an_incoming_migration_leaves_other_entries_alone(tmp_path):
    """abort_incoming ends only what accept_incoming made: an entry without the marker stays."""
    hypervisor = driver(tmp_path)
    dead_entry(hypervisor, "inst-1")
    await hypervisor.abort_incoming("inst-1")
    assert await hypervisor.list() == {"inst-1": CRASHED}
    hypervisor.files("inst-1").incoming.touch()
    await hypervisor.abort_incoming("inst-1")
    assert await hypervisor.list() == {}


def test_a_new_driver_drops_starts_an_old_one_did_not_finish(tmp_path):
    """Staging directories of an earlier driver are removed when the driver is made."""
    staging = tmp_path / "hv" / "instances" / ".new-inst-1"
    staging.mkdir(parents=True)
    (staging / "runtime.json").write_text("{}")
    driver(tmp_path)
    assert not staging.exists()



def test_sockets_of_a_deep_entry_go_to_a_private_short_directory(tmp_path):
    """A socket path longer than a unix socket allows moves to a private per-entry directory under the temporary
    directory (stable for the entry, different per entry); a short entry keeps its sockets."""
    from appliance.drivers.qemu import SOCKET_PATH_MAX, make_socket_dir, socket_dir

    assert socket_dir(tmp_path / "i") is None or len(str(tmp_path / "i" / "console.sock")) > SOCKET_PATH_MAX
    deep = tmp_path / ("d" * 120) / "inst-1"
    other = tmp_path / ("d" * 120) / "inst-2"
    sockets = socket_dir(deep)
    assert sockets is not None and sockets == socket_dir(deep) and sockets != socket_dir(other)
    files = InstanceFiles(deep, sockets)
    assert all(len(str(path)) <= SOCKET_PATH_MAX and path.parent == sockets
               for path in (files.qmp, files.console, files.control))
    assert files.console_log.parent == deep
    make_socket_dir(sockets)
    try:
        assert sockets.stat().st_mode & 0o777 == 0o700 and sockets.parent.stat().st_mode & 0o077 == 0
    finally:
        sockets.rmdir()


def test_a_migration_summary_carries_qemus_own_figures():
    """The text the node reports with a finished migration: QEMU's total time, downtime and RAM sent."""
    from appliance.drivers.qemu import migration_summary

    info = {"status": "completed", "total-time": 512, "downtime": 44, "ram": {"transferred": 100 * 2**20 + 5}}
    assert migration_summary(info) == "in 512 ms, downtime 44 ms, 100 MiB sent"
