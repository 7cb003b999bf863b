"""Tests of appliance/drivers/host.py: the host's capacity, detected or given."""

import os

import pytest

from appliance.drivers.host import RESERVED_MEMORY_MIB, Capacity, CapacityError, detect


def test_memory_comes_from_meminfo_less_the_host_reserve(tmp_path):
    """MemTotal in KiB becomes MiB, less what the host keeps."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8388608 kB\nMemFree:        1000 kB\n")
    assert detect(str(tmp_path), meminfo=str(meminfo)).memory_mib == 8192 - RESERVED_MEMORY_MIB


def test_disk_and_cpus_are_read_from_the_host(tmp_path):
    """Disk is the data directory's free space; cpus are those this process may use."""
    found = detect(str(tmp_path))
    stats = os.statvfs(tmp_path)
    assert found.disk_mib == stats.f_bavail * stats.f_frsize // (1024 * 1024)
    assert found.cpus == len(os.sched_getaffinity(0))


def test_given_figures_replace_the_detected_ones(tmp_path):
    """Nodes sharing a host are given their share."""
    assert detect(str(tmp_path), memory_mib=2048, disk_mib=10_000, cpus=2) == Capacity(2048, 10_000, 2)


def test_a_figure_below_one_is_refused(tmp_path):
    """An override of 0 is an error naming the figure, not a silent 'detect it'."""
    with pytest.raises(CapacityError, match="memory_mib must be a whole number of at least 1, got 0"):
        detect(str(tmp_path), memory_mib=0)


def test_a_missing_data_dir_says_what_to_do(tmp_path):
    """The free space of a directory that does not exist cannot be read; the message says so."""
    with pytest.raises(CapacityError, match="create it first, or give the disk with --disk-mib"):
        detect(str(tmp_path / "nosuch"))


def test_an_unreadable_meminfo_says_what_to_give(tmp_path):
    """Without /proc/meminfo the memory must be given."""
    with pytest.raises(CapacityError, match="give it with --memory-mib"):
        detect(str(tmp_path), meminfo=str(tmp_path / "missing"))
