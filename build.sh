#!/usr/bin/env bash
# Build Cairn on a fresh Debian machine: system packages, .venv, the cffi core.
#   ./build.sh          install everything into .venv and compile fastpath
#   ./build.sh test     the same, then run the whole test suite
#   ./build.sh up       the same, then the main job: a local 3-node cluster with a few instances (README.md)
#   ./build.sh demo     the same, then an event-sourcing demo: build a history, verify it, replay it
set -euo pipefail
cd "$(dirname "$0")"

# Debian's own python3 (built with profile-guided optimisation) folds the event log 12-16 % faster
# than a plain source build of the same version (docs/decisions/0005-prefer-debian-python.md); prefer it.
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        PYTHON=/usr/bin/python3
    fi
fi

need_apt=()
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
# The partition test puts nodes in network namespaces (root only; it is skipped elsewhere).
if [ "$(id -u)" = 0 ] && ! command -v ip >/dev/null 2>&1; then need_apt+=(iproute2); fi
# Real VMs (the kvm hypervisor, its tests and benchmarks): QEMU, its storage daemon and tools, and busybox for
# the test guest (built from Debian packages by 'cairn images build testguest'; tests build it when missing).
if [ "$(id -u)" = 0 ]; then
    command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
    command -v qemu-storage-daemon >/dev/null 2>&1 || need_apt+=(qemu-utils)
    [ -x /bin/busybox ] || need_apt+=(busybox-static)
    # Ganeti OS definitions, run unchanged (the OS-definition tests use these two).
    [ -d /usr/share/ganeti/os/noop ] || need_apt+=(ganeti-os-noop)
    [ -d /usr/share/ganeti/os/debootstrap ] || need_apt+=(ganeti-instance-debootstrap)
fi
"$PYTHON" - <<'PY' 2>/dev/null || need_apt+=("python3-dev")
import sysconfig, os, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=("python3-venv")
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "build.sh: installing system packages: ${need_apt[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
    else
        echo "build.sh: missing system packages: ${need_apt[*]}; install them (apt-get install ${need_apt[*]}) and run again" >&2
        exit 1
    fi
fi

# A .venv made from another interpreter is made again.
wanted=$("$PYTHON" -c 'import sys; print(sys.base_prefix)')
if [ -x .venv/bin/python ] && [ "$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')" != "$wanted" ]; then
    echo "build.sh: .venv was made with another Python; making it again with $PYTHON"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
# constraints.txt: the exact versions the tests ran with, so every machine gets the same ones.
# compat mode: a plain .pth path entry; the default finder costs every cairn process about 9 ms at start-up.
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' -c constraints.txt \
    --config-settings editable_mode=compat
.venv/bin/python fastpath/_build.py

case "${1:-}" in
    test)
        shift
        # The guest-tier tests boot the test guest (a kernel and busybox from Debian's archive): build it now,
        # so that a fresh machine runs them instead of skipping them.
        if [ "$(id -u)" = 0 ] && command -v qemu-system-x86_64 >/dev/null 2>&1; then
            ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || apt-get update -qq || true
            .venv/bin/cairn images build testguest >/dev/null \
                || echo "build.sh: the test guest could not be built; the guest-tier tests will be skipped" >&2
        fi
        exec .venv/bin/python -m pytest "$@"
        ;;
    up)
        shift
        .venv/bin/cairn up "$@"
        # A few instances to look at; an instance that already exists (a second run) is left alone.
        for spec in "web1 diskless node1" "web2 diskless node2" "db1 replicated node1:node3"; do
            set -- $spec
            if ! .venv/bin/cairn instance list --no-headers -o name | grep -qx "$1"; then
                if [ "$2" = replicated ]; then
                    .venv/bin/cairn instance add -t "$2" -n "$3" -s 1G --no-install "$1"
                else
                    .venv/bin/cairn instance add -t "$2" -n "$3" --no-install "$1"
                fi
            fi
        done
        echo
        echo '$ cairn node list'
        .venv/bin/cairn node list
        echo
        echo '$ cairn instance list'
        exec .venv/bin/cairn instance list
        ;;
    demo)
        shift
        mkdir -p out
        .venv/bin/cairn events demo --events "${DEMO_EVENTS:-20000}" --out out/demo.events
        .venv/bin/cairn events verify out/demo.events
        exec .venv/bin/cairn events replay out/demo.events
        ;;
    "") ;;
    *)
        echo "build.sh: unknown argument '$1'; use 'up', 'test', 'demo' or nothing" >&2
        exit 2
        ;;
esac
