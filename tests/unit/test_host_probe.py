"""host_probe: parsing of what the kernel, LVM, libvirt and the lease file say; the whole probe."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import host_probe as hp

MEMINFO = "MemTotal:       24683812 kB\nMemFree:        24200000 kB\nMemAvailable:   24300000 kB\n"


def test_parse_meminfo():
    assert hp.parse_meminfo(MEMINFO) == 24683812 // 1024
    with pytest.raises(hp.ProbeError, match="MemTotal"):
        hp.parse_meminfo("MemFree: 1 kB\n")


def test_memory_and_cpu_of_this_machine():
    with open("/proc/meminfo") as fh:
        assert hp.memory_mb() == hp.parse_meminfo(fh.read()) > 0
    assert hp.cpu_cores() == os.cpu_count()


def test_dir_storage_matches_statvfs(tmp_path):
    st = os.statvfs(tmp_path)
    got = hp.dir_storage(str(tmp_path))
    assert got["total_mb"] == st.f_blocks * st.f_frsize // (1 << 20)
    assert 0 <= got["free_mb"] <= got["total_mb"]
    with pytest.raises(hp.ProbeError, match="cannot stat"):
        hp.dir_storage(str(tmp_path / "missing"))


VGS_JSON = """  {
      "report": [
          {
              "vg": [
                  {"vg_name":"vg_lxcloud", "vg_size":"10236.00", "vg_free":"4092.00"}
              ]
          }
      ]
  }
"""


def test_vgs_exact_command_and_parse():
    assert hp.vgs_argv("vg_lxcloud") == [
        "vgs", "--reportformat", "json", "--units", "m", "--nosuffix",
        "-o", "vg_name,vg_size,vg_free", "--", "vg_lxcloud",
    ]
    assert hp.parse_vgs_json(VGS_JSON, "vg_lxcloud") == {"total_mb": 10236, "free_mb": 4092}
    with pytest.raises(hp.ProbeError, match="not found"):
        hp.parse_vgs_json(VGS_JSON, "other")
    with pytest.raises(hp.ProbeError, match="cannot parse"):
        hp.parse_vgs_json("  Volume group not found", "vg")


def test_lvm_storage_runs_vgs_and_reports_failure():
    calls = []

    def run(argv):
        calls.append(argv)
        return 5, "", '  Volume group "vg_x" not found\n'

    with pytest.raises(hp.ProbeError) as err:
        hp.storage("lvm", "/var/lib/lxcloud", "vg_x", run)
    assert calls == [hp.vgs_argv("vg_x")]
    assert err.value.details["rc"] == 5 and "not found" in err.value.details["stderr"]
    with pytest.raises(hp.ProbeError, match="volume group name"):
        hp.storage("lvm", "/x", None, run)


def test_lvm_refuses_unsafe_vg_name():
    with pytest.raises(hp.InvalidName):
        hp.lvm_storage("vg; rm -rf /", lambda argv: pytest.fail("ran a command"))


@pytest.mark.skipif(shutil.which("vgs") is None, reason="lvm2 is not installed")
def test_real_vgs_on_missing_vg_fails_cleanly():
    with pytest.raises(hp.ProbeError, match="vgs failed") as err:
        hp.lvm_storage("lxcloud_no_such_vg", hp.subprocess_run)
    assert err.value.details["rc"] != 0


LEASES = """ip,mac,name,host
10.213.1.10,02:00:0A:D5:01:0A,vm10.lxcloud.test,lxh1
10.213.1.11,02:00:0a:d5:01:0b,vm11.lxcloud.test,lxh2
# a comment

10.213.1.9,02:00:0a:d5:01:09,vm9.lxcloud.test,lxh1
"""


def test_lease_csv_filters_this_host_and_normalises():
    got = hp.parse_lease_csv(LEASES, "lxh1")
    assert got == [
        {"ip": "10.213.1.9", "mac": "02:00:0a:d5:01:09", "name": "vm9.lxcloud.test"},
        {"ip": "10.213.1.10", "mac": "02:00:0a:d5:01:0a", "name": "vm10.lxcloud.test"},
    ]
    assert hp.parse_lease_csv(LEASES, "lxh3") == []
    # Header is optional.
    assert len(hp.parse_lease_csv(LEASES.split("\n", 1)[1], "lxh2")) == 1


def test_lease_csv_header_gives_the_column_order():
    text = (
        "host,name,mac,ip\n"
        "lxh1,vm1.t,02:00:00:00:00:01,10.0.0.1\n"
        "lxh2,vm2.t,02:00:00:00:00:02,10.0.0.2\n"
    )
    assert hp.parse_lease_csv(text, "lxh1") == [
        {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "name": "vm1.t"}
    ]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("10.213.1.12,zz:00:0a:d5:01:0c,vm12.lxcloud.test,lxh1", "line 3 mac"),
        ("10.213.1.300,02:00:0a:d5:01:0c,vm12.lxcloud.test,lxh1", "line 3 ip"),
        ("10.213.1.12,02:00:0a:d5:01:0c,vm 12;rm,lxh1", "line 3 name"),
        ("10.213.1.12,02:00:0a:d5:01:0c,vm12.lxcloud.test,../etc", "line 3 host"),
        ("10.213.1.12,02:00:0a:d5:01:0c,vm12.lxcloud.test", "line 3: expected 4 fields"),
        ("10.213.1.12,02:00:0a:d5:01:0a,vm12.lxcloud.test,lxh2", "already on line 2"),
    ],
)
def test_lease_csv_rejects_bad_rows_of_any_host(bad_line, message):
    text = "ip,mac,name,host\n10.213.1.10,02:00:0a:d5:01:0a,vm10.lxcloud.test,lxh1\n" + bad_line
    with pytest.raises(hp.ProbeError, match=message):
        hp.parse_lease_csv(text, "lxh9")


class FakeLeaseClient:
    def __init__(self, rows):
        self.rows = rows
        self.asked = []

    def lease_list(self, host):
        self.asked.append(host)
        return self.rows


def test_lease_source_auto_prefers_file(tmp_path):
    f = tmp_path / "leases.csv"
    row = {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "name": "a", "host": "lxh1"}
    client = FakeLeaseClient([row])
    assert hp.allowed_leases("auto", "lxh1", str(f), client) == (
        "api",
        [{"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "name": "a"}],
    )
    assert client.asked == ["lxh1"]
    f.write_text(LEASES)
    used, leases = hp.allowed_leases("auto", "lxh1", str(f), client)
    assert used == "file" and len(leases) == 2 and client.asked == ["lxh1"]
    assert hp.allowed_leases("auto", "lxh1", str(tmp_path / "none"), None) == ("none", [])
    with pytest.raises(hp.ProbeError, match="needs the API"):
        hp.allowed_leases("api", "lxh1", str(f), None)
    with pytest.raises(hp.ProbeError, match="cannot read"):
        hp.allowed_leases("file", "lxh1", str(tmp_path / "none"), None)


def test_api_leases_of_other_hosts_are_dropped_and_validated():
    rows = [
        {"ip": "10.0.0.2", "mac": "02:00:00:00:00:02", "name": "b", "host": "lxh1", "state": "u"},
        {"ip": "10.0.0.3", "mac": "02:00:00:00:00:03", "name": "c", "host": "lxh2"},
    ]
    assert [x["mac"] for x in hp.leases_from_api(FakeLeaseClient(rows), "lxh1")] == [
        "02:00:00:00:00:02"
    ]
    with pytest.raises(hp.ProbeError, match="lease table"):
        hp.leases_from_api(FakeLeaseClient([{"ip": "x", "mac": "m", "host": "lxh1"}]), "lxh1")


VIRSH_VERSION = """Compiled against library: libvirt 9.0.0
Using library: libvirt 9.0.0
Using API: QEMU 9.0.0
Running hypervisor: QEMU 7.2.0
Running against daemon: 9.0.0
"""


def test_virsh_probe_exact_commands():
    calls = []

    def run(argv):
        calls.append(argv)
        if argv[4] == "version":
            return 0, VIRSH_VERSION, ""
        return 0, "vm-2\nvm-1\n\n", ""

    got = hp.libvirt_virsh_probe("qemu:///system", run)
    assert calls == [
        ["virsh", "-r", "-c", "qemu:///system", "version", "--daemon"],
        ["virsh", "-r", "-c", "qemu:///system", "list", "--name", "--state-running"],
    ]
    assert got == {
        "available": True,
        "via": "virsh",
        "version": "9.0.0",
        "hypervisor": "qemu",
        "hypervisor_version": "7.2.0",
        "domains": ["vm-1", "vm-2"],
    }


def test_virsh_probe_daemon_down():
    got = hp.libvirt_virsh_probe(
        "qemu:///system", lambda argv: (1, "", "error: failed to connect to the hypervisor\n")
    )
    assert got["available"] is False and "failed to connect" in got["error"]


def test_bindings_probe_unreachable_daemon():
    got = hp.libvirt_bindings_probe("qemu+unix:///system?socket=/nonexistent/sock")
    if got is None:
        pytest.skip("libvirt python bindings not importable in this interpreter")
    assert got["available"] is False and got["via"] == "python"


def test_staged_images(tmp_path):
    (tmp_path / "golden-1.raw").write_bytes(b"\0")
    (tmp_path / "golden-1.json").write_text(
        json.dumps({"name": "golden", "version": "1", "sha256": "ab" * 32, "size": 1})
    )
    (tmp_path / "partial-2.json").write_text(json.dumps({"name": "partial", "version": "2"}))
    (tmp_path / "broken-3.json").write_text("{not json")
    (tmp_path / "notes.txt").write_text("x")
    got = hp.staged_images(str(tmp_path))
    assert [i["file"] for i in got] == ["broken-3.json", "golden-1.json", "partial-2.json"]
    assert got[0]["present"] is False and "error" in got[0]
    assert got[1] == {
        "file": "golden-1.json", "name": "golden", "version": "1", "sha256": "ab" * 32,
        "size": 1, "present": True,
    }
    assert got[2]["present"] is False
    assert hp.staged_images(str(tmp_path / "none")) == []


def test_probe_end_to_end(tmp_path):
    (tmp_path / "images").mkdir()
    lease_file = tmp_path / "leases.csv"
    lease_file.write_text(LEASES)
    calls = []

    def run(argv):
        calls.append(argv)
        return 1, "", "no libvirt here"

    facts = hp.probe(
        host="lxh1",
        storage_dir=str(tmp_path),
        images_dir=str(tmp_path / "images"),
        lease_file=str(lease_file),
        libvirt_uri="qemu+unix:///system?socket=/nonexistent/sock",
        run=run,
        use_libvirt_bindings=False,
    )
    assert facts["name"] == "lxh1" and facts["cpu"] == os.cpu_count()
    assert facts["macs"] == ["02:00:0a:d5:01:09", "02:00:0a:d5:01:0a"]
    assert facts["lease_source"] == "file"
    assert facts["disk_mb"] == facts["storage"]["total_mb"] > 0
    assert facts["libvirt"]["available"] is False
    json.dumps(facts)  # JSON-able, as modules return it
    info = hp.registration_info(facts)
    assert info["libvirt_available"] is False and info["lease_source"] == "file"
    assert "leases" not in info and info["disk_free_mb"] == facts["disk_free_mb"]


def test_probe_refuses_bad_host_name(tmp_path):
    with pytest.raises(hp.InvalidName, match="host name"):
        hp.probe(host="lxh1/../x", storage_dir=str(tmp_path), lease_source="none")
