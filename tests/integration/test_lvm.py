"""LVM for real, on the LVM guest (testbed/lvm_guest.py: a qemu guest with device-mapper, reached
over SSH like any hypervisor): through the collection, the hypervisor role's storage tasks create
the volume group and a thin pool; lxcloud.cloud.image stages the test golden image onto an LV
(plain and thin) through a temporary LV; lxcloud.cloud.disk makes VM disks as a classic snapshot
and as a thin snapshot; second runs change nothing; a full volume group gives a clear error and
leaves no LV behind; a snapshot that overflows is reported; removal.

Under TCG every module run costs seconds, so the whole scenario is one ansible-playbook run (a
module-scoped fixture), whose task results the tests below check.  Without root, libvirt or qemu
the tests skip; under CI=true they fail."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from libvirt_helpers import playbook
from testbed_helpers import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
VG = "lxlvmvg"
POOL = "pool"
SNAP_COW = "8M"
FILLER = "lxlvm-filler"


def _guest_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lxcloud_lvm_guest",
                                                  REPO / "testbed" / "lvm_guest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def no_guest_reason() -> str | None:
    if os.geteuid() != 0:
        return "the LVM guest needs root (libvirt's system instance, a root qemu for 9p)"
    for tool in ("virsh", "libvirtd", "qemu-system-x86_64", "ssh", "ssh-keygen", "cpio"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            return f"{tool} is not installed (scripts/bootstrap installs it)"
    for path in ("/usr/sbin/sshd", "/usr/sbin/lvm", "/usr/sbin/thin_check", "/usr/bin/python3"):
        if not os.path.exists(path):
            return f"{path} is missing (scripts/bootstrap installs it)"
    return None


@pytest.fixture(scope="module")
def lvm_guest() -> Iterator[ModuleType]:
    """The LVM guest, up (reused when already up), its disk wiped; down again afterwards when
    this fixture started it (unless LXCLOUD_LVM_GUEST_KEEP=1)."""
    reason = no_guest_reason()
    if reason:
        skip_or_fail(reason)
    mod = _guest_module()
    guest = mod.Guest()
    try:
        st = guest.up()
    except mod.GuestError as e:
        pytest.fail(f"the LVM guest did not come up: {e}")
    wipe = subprocess.run(guest.ssh_argv(
        "for vg in $(vgs --noheadings -o vg_name); do vgremove -ff -y $vg >/dev/null; done; "
        "pvremove -ff -y /dev/vda >/dev/null 2>&1; wipefs -qa /dev/vda; "
        "rm -rf /var/lib/lxcloud"), capture_output=True, text=True, check=False, timeout=120)
    assert wipe.returncode == 0, wipe.stderr
    try:
        yield guest
    finally:
        if st.get("started") and os.environ.get("LXCLOUD_LVM_GUEST_KEEP") != "1":
            guest.down()


def golden_gz(directory: Path) -> tuple[Path, str, int]:
    """The test golden image, gzip-compressed where the guest sees it (the host's / is its
    lower root); returns (path, sha256 of the .gz, unpacked size)."""
    subprocess.run([str(REPO / "images" / "build-test-image")], check=True, capture_output=True)
    raw = REPO / ".cache" / "test-image" / "golden.raw"
    gz = directory / "golden.raw.gz"
    with open(raw, "rb") as f, open(gz, "wb") as out:
        out.write(gzip.compress(f.read(), mtime=0))
    return gz, hashlib.sha256(gz.read_bytes()).hexdigest(), raw.stat().st_size


def plays(doc: dict, host: str) -> dict[str, list[tuple[str, dict]]]:
    """Per play name: (task name, result) of every task the host ran."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for play in doc.get("plays", []):
        name = play.get("play", {}).get("name", "")
        # role tasks are named "ROLE : TASK"
        out[name] = [(t["task"]["name"].split(" : ")[-1], t["hosts"][host])
                     for t in play.get("tasks", []) if host in t.get("hosts", {})]
    return out


@pytest.fixture(scope="module")
def scenario(lvm_guest) -> Iterator[dict]:
    guest = lvm_guest
    work = Path(tempfile.mkdtemp(prefix="lxlvm-test-", dir=REPO / ".cache"))
    try:
        gz, sha, size = golden_gz(work)
        role_vars = {
            "hypervisor_storage_backend": "lvm", "hypervisor_storage_vg": VG,
            "hypervisor_storage_pvs": ["/dev/vda"], "hypervisor_storage_thin_pool": POOL,
            "hypervisor_storage_thin_pool_size": "256M",
        }
        storage = {"include_role": {"name": "lxcloud.cloud.hypervisor",
                                    "tasks_from": "storage.yml"}}
        image = {"src": str(gz), "sha256": sha, "compression": "gzip", "size": size,
                 "backend": "lvm", "vg": VG, "report": False}
        classic = {"name": "vm1", "backend": "lvm", "vg": VG, "base": "golden-1",
                   "size": SNAP_COW, "lvm_snapshot": "classic"}
        thin = {"name": "vm2", "backend": "lvm", "vg": VG, "base": "tgolden-1"}
        # plain commands go through raw: no python3 start in the guest (seconds under TCG)
        lvs = ("lvs --reportformat json --units b --nosuffix "
               f"-o lv_name,segtype,pool_lv,origin,lv_size,lv_attr {VG}")

        def t(name: str, module: str, args: dict | str, **kw) -> dict:
            return {"name": name, module: args, "ignore_errors": True, **kw}

        scenario_tasks = [
            t("stage", "lxcloud.cloud.image", {"name": "golden", "version": "1", **image}),
            t("stage again", "lxcloud.cloud.image", {"name": "golden", "version": "1", **image}),
            t("stage thin", "lxcloud.cloud.image",
              {"name": "tgolden", "version": "1", "thin_pool": POOL, **image}),
            t("lvs staged", "ansible.builtin.raw", lvs),
            t("snapshot check mode", "lxcloud.cloud.disk", classic, check_mode=True),
            t("snapshot", "lxcloud.cloud.disk", classic),
            t("snapshot again", "lxcloud.cloud.disk", classic),
            t("thin clone", "lxcloud.cloud.disk", thin),
            t("thin clone again", "lxcloud.cloud.disk", thin),
            t("clones hold the image", "ansible.builtin.raw",
              f"cmp -n {size} /dev/{VG}/vm1 /dev/{VG}/golden-1 && "
              f"cmp -n {size} /dev/{VG}/vm2 /dev/{VG}/tgolden-1"),
            t("overflow the snapshot", "ansible.builtin.raw",
              f"dd if=/dev/urandom of=/dev/{VG}/vm1 bs=1M count=16 oflag=direct status=none"),
            t("overflowed snapshot", "lxcloud.cloud.disk", classic),
            t("fill the VG", "ansible.builtin.raw", f"lvcreate --yes -l 100%FREE -n {FILLER} {VG}"),
            t("snapshot in a full VG", "lxcloud.cloud.disk", dict(classic, name="vm3")),
            t("stage into a full VG", "lxcloud.cloud.image",
              {"name": "golden", "version": "2", **image}),
            t("lvs full", "ansible.builtin.raw", lvs),
            t("free the VG", "ansible.builtin.raw", f"lvremove --yes {VG}/{FILLER}"),
            t("remove snapshot", "lxcloud.cloud.disk",
              {"name": "vm1", "backend": "lvm", "vg": VG, "state": "absent"}),
            t("remove snapshot again", "lxcloud.cloud.disk",
              {"name": "vm1", "backend": "lvm", "vg": VG, "state": "absent"}),
            t("remove thin clone", "lxcloud.cloud.disk",
              {"name": "vm2", "backend": "lvm", "vg": VG, "state": "absent"}),
            t("remove thin clone again", "lxcloud.cloud.disk",
              {"name": "vm2", "backend": "lvm", "vg": VG, "state": "absent"}),
            t("lvs end", "ansible.builtin.raw", lvs),
        ]
        pb = [
            {"name": "storage", "hosts": "lvm_guests", "gather_facts": False,
             "vars": role_vars, "tasks": [storage]},
            {"name": "storage again", "hosts": "lvm_guests", "gather_facts": False,
             "vars": role_vars, "tasks": [storage]},
            {"name": "scenario", "hosts": "lvm_guests", "gather_facts": False,
             "tasks": scenario_tasks},
        ]
        path = work / "lvm.yml"
        path.write_text(json.dumps(pb))  # JSON is YAML
        doc = playbook(str(path), inventory=str(guest.inventory))
        result = plays(doc, "lxlvm-guest")
        assert "scenario" in result, (doc.get("rc"), doc.get("stderr", "")[-3000:])
        yield {"plays": result, "tasks": dict(result["scenario"]), "size": size}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def lv_names(res: dict) -> dict[str, dict]:
    assert res.get("rc") == 0, res
    out = res["stdout"]  # raw runs on a tty: stderr may be mixed in, the JSON is one object
    report = json.loads(out[out.index("{"):out.rindex("}") + 1])["report"][0]["lv"]
    return {lv["lv_name"]: lv for lv in report}


def test_storage_tasks_create_the_vg_and_thin_pool_once(scenario) -> None:
    first = dict(scenario["plays"]["storage"])
    again = scenario["plays"]["storage again"]
    assert first["Create the volume group on its physical volumes"]["changed"] is True, first
    assert first["Create the thin pool"]["changed"] is True
    probe = first["Probe the storage backend"]
    assert not probe.get("failed"), probe
    assert [name for name, r in again if r.get("changed")] == [], again
    assert all(not r.get("failed") for _, r in again), again
    assert dict(again)["Create the volume group on its physical volumes"].get("skipped")


def test_image_is_staged_onto_an_lv_through_a_temporary_lv(scenario) -> None:
    t = scenario["tasks"]
    stage, again, thin = t["stage"], t["stage again"], t["stage thin"]
    assert stage["changed"] is True and not stage.get("failed"), stage
    assert stage["path"] == f"/dev/{VG}/golden-1" and stage["image"]["state"] == "verified"
    assert again["changed"] is False and not again.get("failed"), again
    assert thin["changed"] is True and thin["image"]["thin_pool"] == POOL, thin
    lvs = lv_names(t["lvs staged"])
    assert lvs["golden-1"]["segtype"] == "linear"
    assert int(lvs["golden-1"]["lv_size"]) == scenario["size"]
    assert lvs["tgolden-1"]["segtype"] == "thin" and lvs["tgolden-1"]["pool_lv"] == POOL
    assert not [n for n in lvs if n.endswith("-staging")], lvs


def test_classic_snapshot_and_thin_clone(scenario) -> None:
    t = scenario["tasks"]
    assert t["snapshot check mode"]["changed"] is True
    snap = t["snapshot"]
    assert snap["changed"] is True and not snap.get("failed"), snap
    assert snap["path"] == f"/dev/{VG}/vm1" and snap["clone"]["base"] == "golden-1"
    assert snap["clone"]["thin"] is False and snap["clone"]["overflowed"] is False
    assert t["snapshot again"]["changed"] is False and not t["snapshot again"].get("failed")
    clone = t["thin clone"]
    assert clone["changed"] is True and not clone.get("failed"), clone
    assert clone["clone"]["thin"] is True and clone["clone"]["base"] == "tgolden-1"
    assert t["thin clone again"]["changed"] is False
    assert t["clones hold the image"]["rc"] == 0, t["clones hold the image"]


def test_overflowed_snapshot_is_reported(scenario) -> None:
    t = scenario["tasks"]
    r = t["overflowed snapshot"]
    assert r.get("failed") and "overflowed" in r["msg"] and "vm1" in r["msg"], r


def test_full_vg_gives_a_clear_error_and_leaves_no_lv(scenario) -> None:
    t = scenario["tasks"]
    assert t["fill the VG"]["rc"] == 0, t["fill the VG"]
    snap = t["snapshot in a full VG"]
    assert snap.get("failed") and f"volume group {VG} is full" in snap["msg"], snap
    stage = t["stage into a full VG"]
    assert stage.get("failed") and stage["error"] == "DiskFull", stage
    assert f"volume group {VG} has not enough free space for golden-2" in stage["msg"]
    lvs = lv_names(t["lvs full"])
    assert "vm3" not in lvs and "golden-2" not in lvs and "golden-2-staging" not in lvs, lvs


def test_removal(scenario) -> None:
    t = scenario["tasks"]
    assert t["remove snapshot"]["changed"] is True, t["remove snapshot"]
    assert t["remove snapshot again"]["changed"] is False
    assert t["remove thin clone"]["changed"] is True, t["remove thin clone"]
    assert t["remove thin clone again"]["changed"] is False
    lvs = lv_names(t["lvs end"])
    assert sorted(lvs) == ["golden-1", POOL, "tgolden-1"], lvs
