"""The installable halves, in pieces (scripts/install-check, which scripts/test runs, does the
whole: fresh venvs, playbooks by FQCN, lxcloud serve): the wheel carries exactly the files of
the collection tarball, MANIFEST.json and FILES.json included, and nothing of the developer's
checkout; install-check answers --help without side effects."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFIX = "ansible_collections/lxcloud/cloud/"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([BIN / "ansible-galaxy", "collection", "build", "--output-path", out, REPO],
                   check=True, capture_output=True, cwd=out)
    subprocess.run([BIN / "pip", "wheel", "-q", "--no-deps", "-w", out, REPO],
                   check=True, capture_output=True)
    (tarball,) = out.glob("lxcloud-cloud-*.tar.gz")
    (wheel,) = out.glob("lxcloud-*.whl")
    return tarball, wheel


def test_wheel_carries_the_collection_tarball(artifacts: tuple[Path, Path]) -> None:
    tarball, wheel = artifacts
    with tarfile.open(tarball) as tar:
        in_tar = {m.name: m for m in tar.getmembers() if m.isfile()}
        tar_manifest = json.load(tar.extractfile(in_tar["MANIFEST.json"]))  # type: ignore[arg-type]
        tar_files = {n: tar.extractfile(m).read() for n, m in in_tar.items()}  # type: ignore[union-attr]
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        in_whl = {n[len(PREFIX):]: whl.read(n) for n in names if n.startswith(PREFIX)}
    assert set(in_whl) == set(tar_files)
    for name, data in tar_files.items():
        if name != "MANIFEST.json" and name != "FILES.json":
            assert in_whl[name] == data, name
    manifest = json.loads(in_whl["MANIFEST.json"])
    assert manifest["collection_info"]["namespace"] == "lxcloud"
    assert manifest["collection_info"]["name"] == "cloud"
    assert manifest["collection_info"]["version"] == tar_manifest["collection_info"]["version"]
    # FILES.json lists what is there (ansible-galaxy verify reads it)
    listed = {f["name"] for f in json.loads(in_whl["FILES.json"])["files"] if f["ftype"] == "file"}
    assert listed == set(in_whl) - {"MANIFEST.json", "FILES.json"}
    # What a collection needs is in it; the developer's tree is not.
    # (galaxy.yml is not: a built collection has MANIFEST.json instead, like those of `ansible`)
    for path in ("meta/runtime.yml", "plugins/modules/vm.py",
                 "plugins/module_utils/names.py", "roles/control_plane/tasks/main.yml",
                 "roles/control_plane/files/lxcloud-supervise", "playbooks/control_plane.yml"):
        assert path in in_whl, path
    for name in names:
        if name.startswith(PREFIX + "tests/"):  # of tests/, only the sanity ignore files ship
            assert name.startswith(PREFIX + "tests/sanity/ignore-"), name
        assert not name.startswith((PREFIX + "lxcloud_py/", PREFIX + ".")), name
        assert "__pycache__" not in name and not name.endswith(".pyc"), name
    assert any(n.startswith("lxcloud_py/cli/") for n in names)


def test_install_check_help(tmp_path: Path) -> None:
    before = sorted(Path("/tmp").glob("lxcloud-install-check.*"))
    p = subprocess.run([REPO / "scripts" / "install-check", "--help"], capture_output=True,
                       text=True, cwd=tmp_path, check=False)
    assert p.returncode == 0, p.stderr
    assert "ANSIBLE_COLLECTIONS_PATH" in p.stdout and "lxcloud.cloud.control_plane" in p.stdout
    assert sorted(Path("/tmp").glob("lxcloud-install-check.*")) == before
    bad = subprocess.run([REPO / "scripts" / "install-check", "--bogus"], capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr
