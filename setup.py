"""Build hook: the lxcloud wheel carries the Ansible collection ``lxcloud.cloud``.

Everything else about the package is in pyproject.toml. ``build_py`` builds the collection
with ``ansible-galaxy collection build`` (so the wheel holds exactly the files of the galaxy
tarball, with its MANIFEST.json and FILES.json) and unpacks it as
``ansible_collections/lxcloud/cloud/`` next to ``lxcloud_py/``: installed, it lands in
site-packages, where ansible-core finds collections on ``sys.path`` -- the way the ``ansible``
package on PyPI ships its collections. Editable installs skip it: scripts/bootstrap links the
checkout there instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
COLLECTION_DIR = ("ansible_collections", "lxcloud", "cloud")


def build_collection(src: Path, dest: Path) -> None:
    """``ansible-galaxy collection build`` of ``src``, unpacked into ``dest`` (replaced)."""
    with tempfile.TemporaryDirectory(prefix="lxcloud-collection-") as tmp:
        env = dict(
            os.environ,
            LC_ALL="C.UTF-8",  # ansible-core refuses a non-UTF-8 locale
            ANSIBLE_HOME=str(Path(tmp, "ansible-home")),
        )
        env.pop("ANSIBLE_CONFIG", None)  # not the checkout's ansible.cfg: none is needed
        subprocess.run(
            [sys.executable, "-m", "ansible.cli.galaxy", "collection", "build",
             "--output-path", tmp, str(src)],
            cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL,
        )
        (tarball,) = Path(tmp).glob("lxcloud-cloud-*.tar.gz")
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(dest, filter="data")


class BuildPyWithCollection(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            build_collection(HERE, Path(self.build_lib, *COLLECTION_DIR))


setup(cmdclass={"build_py": BuildPyWithCollection})
