"""The repository is a valid collection: it builds, installs, and every module documents itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULES = sorted(
    p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if p.stem != "__init__"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", "--force", "--output-path", out, REPO],
        check=True,
        capture_output=True,
        text=True,
    )
    (tarball,) = out.glob("lxcloud-cloud-*.tar.gz")
    dest = tmp_path_factory.mktemp("collections")
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "install", "--force", "-p", dest, tarball],
        check=True,
        capture_output=True,
        text=True,
    )
    return dest


def test_built_collection_installs_without_dev_files(installed: Path) -> None:
    root = installed / "ansible_collections" / "lxcloud" / "cloud"
    assert (root / "MANIFEST.json").is_file()
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["namespace"] == "lxcloud"
    for dev_only in ("lxcloud_py", ".venv", "testbed", "bench", "scripts"):
        assert not (root / dev_only).exists(), dev_only
    # of tests/, only ansible-test's sanity ignore files ship (ansible-test reads them there)
    shipped = sorted(str(p.relative_to(root)) for p in (root / "tests").rglob("*") if p.is_file())
    assert shipped and all(p.startswith("tests/sanity/ignore-") for p in shipped), shipped


@pytest.mark.skipif(not MODULES, reason="no modules yet")
def test_every_module_documents_itself(installed: Path) -> None:
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(installed),
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="False",
    )
    names = [f"lxcloud.cloud.{m}" for m in MODULES]
    res = subprocess.run(
        [BIN / "ansible-doc", "--json", *names], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    docs = json.loads(res.stdout)
    for name in names:
        doc = docs[name]
        assert doc["doc"].get("short_description"), name
        assert doc["examples"], f"{name} has no EXAMPLES"
        assert doc["return"] is not None, f"{name} has no RETURN"
        yaml.safe_load(doc["examples"])  # the examples are valid YAML


def test_galaxy_metadata() -> None:
    meta = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert (meta["namespace"], meta["name"]) == ("lxcloud", "cloud")
    assert yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["requires_ansible"]
