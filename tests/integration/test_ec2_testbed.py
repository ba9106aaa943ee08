"""Issue 16's end-to-end test: ``aws ec2 run-instances`` against ``lxcloud serve`` (stages api,
scheduler, executor and ec2) boots a real VM on the testbed (libvirt/qemu, ansible-runner); the
instance goes pending -> running, its domain runs on a host, ``terminate-instances`` takes it
through shutting-down to terminated and the domain goes.

The farm (leases, hypervisors playbook, image staged) is :func:`test_farm.prepare`'s; the
daemon's config is :class:`test_daemon.Daemon`'s plus an ``ec2`` section.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_daemon_testbed import Daemon, running_domains
from test_daemon_testbed import dfarm as dfarm  # the fixture
from test_farm import IMAGE, Farm, wait_for

from lxcloud_py.store import schema

pytestmark = [pytest.mark.testbed, pytest.mark.libvirt, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("dfarm", ["sqlite"], indirect=True)
def test_aws_cli_run_instances_boots_a_vm(dfarm: Farm) -> None:
    farm = dfarm
    port, key_file = _free_port(), farm.work / "ec2.key"
    farm.server.stop()
    daemon = Daemon(farm, "daemon", "api,monitor,scheduler,executor,ec2")
    conf = farm.work / "lxcloud.yml"
    data = json.loads(conf.read_text())
    data["ec2"] = {"listen": f"127.0.0.1:{port}", "key_file": str(key_file),  # the farm's size
                   "instance_types": {"lx.tiny": {"vcpu": 1, "memory_mb": 192}},
                   "default_instance_type": "lx.tiny"}
    conf.write_text(json.dumps(data))
    out = farm.lxcloud("user", "key", "create", "oneadmin", "--key-file", key_file).stdout
    key_id = out.split("AccessKeyId:")[1].split()[0]
    secret = out.split("SecretAccessKey:")[1].split()[0]
    with farm.store.transaction() as conn:
        image_id = conn.execute(
            schema.images.select().where(schema.images.c.name == IMAGE)
        ).first().id
    aws = Path(sys.executable).with_name("aws")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "lxcloud-1", "AWS_CONFIG_FILE": str(farm.work / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(farm.work / "none")}  # fmt: skip

    def ec2(*args: str) -> Any:
        res = subprocess.run(
            [str(aws), "--endpoint-url", f"http://127.0.0.1:{port}/", "--output", "json",
             "ec2", *args], env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def state(iid: str) -> str:
        r = ec2("describe-instances", "--instance-ids", iid)
        return str(r["Reservations"][0]["Instances"][0]["State"]["Name"])

    daemon.start()
    try:
        wait_for("EC2 listener", lambda: _listening(port), 60, step=0.5)
        t0 = time.monotonic()
        made = ec2("run-instances", "--image-id", f"ami-{image_id:017x}", "--count", "1",
                   "--instance-type", "lx.tiny",
                   "--tag-specifications", "ResourceType=instance,Tags=[{Key=test,Value=e2e}]")
        (inst,) = made["Instances"]
        iid, vm_id = inst["InstanceId"], int(inst["InstanceId"][2:], 16)
        assert inst["State"]["Name"] == "pending"
        wait_for("instance running", lambda: state(iid) == "running", 300, step=2)
        print(f"run-instances to running: {time.monotonic() - t0:.1f} s")
        assert f"one-{vm_id}" in running_domains(farm)
        got = ec2("describe-instances", "--filters", "Name=tag:test,Values=e2e")
        assert got["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
        term = ec2("terminate-instances", "--instance-ids", iid)["TerminatingInstances"][0]
        assert (term["PreviousState"]["Name"], term["CurrentState"]["Name"]) == (
            "running", "shutting-down")
        wait_for("instance terminated", lambda: state(iid) == "terminated", 180, step=2)
        assert f"one-{vm_id}" not in running_domains(farm)
    finally:
        daemon.proc.stop()
        print(daemon.log()[-3000:])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False
