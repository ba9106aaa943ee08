"""The EC2 Query API driven by the real boto3 and the real aws CLI (issue 16), on SQLite and
MariaDB: instances with tags and user data, filters, pagination, state changes, the VMs in
one.vmpool.info and ``lxcloud vm list``; SigV4 refusals; access keys and their CLI."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from sqlalchemy import insert, select, update

from lxcloud_py import auth, images, lifecycle, template, users, vms
from lxcloud_py.api import Dispatcher
from lxcloud_py.api.ec2 import Ec2Server, keys, sigv4
from lxcloud_py.api.ec2.config import Ec2Config, from_section
from lxcloud_py.cli import main
from lxcloud_py.lifecycle import Actor
from lxcloud_py.model import InvalidInput
from lxcloud_py.store import Store, now, schema
from lxcloud_py.throttle import LoginThrottle

REGION = "lxcloud-1"
AMI = "ami-00000000000000001"


class Cloud:
    def __init__(self, store: Store, tmp: Path) -> None:
        self.store = store
        self.config = Ec2Config(key_file=tmp / "ec2.key")
        users.ensure_admin(store, "adminpw")
        with store.transaction() as conn:
            for name in ("alice", "bob"):
                conn.execute(
                    insert(schema.users).values(
                        name=name,
                        password_hash=auth.hash_password("x"),
                        is_admin=False,
                        created=now(),
                    )
                )
        images.register(store, "alma9", "1", "a" * 64, 1000)
        # failures are throttled per address: these tests make more than the free five
        self.server = Ec2Server(
            store, self.config, ("127.0.0.1", 0), throttle=LoginThrottle(free=100)
        )
        import threading

        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.keys = {
            u: keys.create(store, self.server.server_key, u) for u in ("oneadmin", "alice", "bob")
        }

    def client(self, user: str, secret: str | None = None, retries: int = 2) -> Any:
        k = self.keys[user]
        return boto3.client(
            "ec2",
            endpoint_url=self.server.url,
            region_name=REGION,
            aws_access_key_id=k.access_key_id,
            aws_secret_access_key=secret or k.secret,
            config=BotoConfig(retries={"total_max_attempts": retries + 1}),
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cloud(store: Store, tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(store, tmp_path)
    try:
        yield c
    finally:
        c.close()


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def _ids(reply: dict[str, Any]) -> list[str]:
    return [i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]]


def _vm(iid: str) -> int:
    return int(iid[2:], 16)


def test_boto3_run_describe_terminate(cloud: Cloud) -> None:
    ec2 = cloud.client("alice")
    run = ec2.run_instances(
        ImageId=AMI,
        MinCount=3,
        MaxCount=3,
        InstanceType="t2.micro",
        UserData="#!/bin/sh\necho hi\n",
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "role", "Value": "worker"}, {"Key": "farm", "Value": "a"}],
            }
        ],
    )
    ids = [i["InstanceId"] for i in run["Instances"]]
    assert len(ids) == 3 and all(len(i) == 19 and i.startswith("i-") for i in ids)
    assert {i["State"]["Name"] for i in run["Instances"]} == {"pending"}
    assert [i["AmiLaunchIndex"] for i in run["Instances"]] == [0, 1, 2]
    # the VMs: the instance type's size, the image, the user data in the context
    with cloud.store.transaction() as conn:
        vm = vms.get(conn, _vm(ids[0]))
    assert (vm["vcpu"], vm["memory_mb"], vm["image_name"], vm["owner"]) == (
        1,
        1024,
        "alma9",
        "alice",
    )
    ctx = template.parse(vm["template"]).vectors("CONTEXT")[0]
    assert base64.b64decode(ctx["USER_DATA"]) == b"#!/bin/sh\necho hi\n"
    assert ctx["USERDATA_ENCODING"] == "base64"
    more = ec2.run_instances(ImageId=AMI, MinCount=4, MaxCount=4)  # default type m1.small
    assert {i["InstanceType"] for i in more["Instances"]} == {"m1.small"}
    # filters
    tagged = ec2.describe_instances(Filters=[{"Name": "tag:role", "Values": ["worker"]}])
    assert sorted(_ids(tagged)) == sorted(ids)
    assert (
        _ids(
            ec2.describe_instances(
                Filters=[
                    {"Name": "tag:role", "Values": ["w*"]},
                    {"Name": "tag:farm", "Values": ["b"]},
                ]
            )
        )
        == []
    )
    assert len(_ids(ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["farm"]}]))) == 3
    assert (
        len(
            _ids(
                ec2.describe_instances(Filters=[{"Name": "instance-type", "Values": ["m1.small"]}])
            )
        )
        == 4
    )
    assert len(_ids(ec2.describe_instances(Filters=[{"Name": "image-id", "Values": [AMI]}]))) == 7
    assert _ids(ec2.describe_instances(Filters=[{"Name": "image-id", "Values": ["ami-0"]}])) == []
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances(Filters=[{"Name": "vpc-id", "Values": ["x"]}])
    assert _code(exc) == "InvalidParameterValue"
    # pagination: 7 instances, 5 a page
    pages = list(ec2.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 5}))
    assert [len(p["Reservations"]) for p in pages] == [5, 2]
    assert sorted(i for p in pages for i in _ids(p)) == sorted(ids + _ids({"Reservations": [more]}))
    # states: pending -> running (scheduler, executor) -> shutting-down -> terminated
    first = _vm(ids[0])
    with cloud.store.transaction() as conn:
        vms.action_in(cloud.store, conn, first, lifecycle.PLACE, actor=Actor.SCHEDULER)
    assert vms.executor_transition(cloud.store, first, lifecycle.DEPLOYED, "up")
    state = ec2.describe_instances(InstanceIds=[ids[0]])["Reservations"][0]["Instances"][0]
    assert state["State"] == {"Code": 16, "Name": "running"}
    running = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["running"]}]
    )
    assert _ids(running) == [ids[0]]
    term = ec2.terminate_instances(InstanceIds=[ids[0], ids[1]])["TerminatingInstances"]
    assert [(t["PreviousState"]["Name"], t["CurrentState"]["Name"]) for t in term] == [
        ("running", "shutting-down"),
        ("pending", "terminated"),
    ]
    assert vms.executor_transition(cloud.store, first, lifecycle.DESTROYED, "gone")
    gone = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["terminated"]}]
    )
    assert sorted(_ids(gone)) == sorted(ids[:2])
    # terminated an hour ago: listed only when asked for by id
    with cloud.store.transaction() as conn:
        conn.execute(
            update(schema.vms).where(schema.vms.c.id == _vm(ids[1])).values(ended=now() - 7200)
        )
    assert ids[1] not in _ids(ec2.describe_instances())
    assert _ids(ec2.describe_instances(InstanceIds=[ids[1]])) == [ids[1]]
    # terminating again is fine, as in EC2
    again = ec2.terminate_instances(InstanceIds=[ids[0]])["TerminatingInstances"][0]
    assert again["CurrentState"]["Name"] == again["PreviousState"]["Name"] == "terminated"
    # the same VMs through the OpenNebula API and the CLI
    body = Dispatcher(cloud.store)._dispatch(
        "one.vmpool.info", ("oneadmin:adminpw", -2, -1, -1, -2)
    )
    assert body[0] is True
    for iid in ids:
        assert f"<ID>{_vm(iid)}</ID>" in body[1]
    assert f"<ID>{_vm(ids[2])}</ID>" in body[1]


def test_vm_list_shows_ec2_instances(cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    run = cloud.client("bob").run_instances(ImageId=AMI, MinCount=2, MaxCount=2)
    assert main(["--db", cloud.store.url, "vm", "list"]) == 0
    out = capsys.readouterr().out
    for inst in run["Instances"]:
        line = next(
            ln for ln in out.splitlines() if ln.split()[:1] == [str(_vm(inst["InstanceId"]))]
        )
        assert "PENDING" in line and "alma9" in line


def test_users_see_their_own_admin_all(cloud: Cloud) -> None:
    alice, bob, admin = cloud.client("alice"), cloud.client("bob"), cloud.client("oneadmin")
    a = alice.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    b = bob.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    assert _ids(alice.describe_instances()) == [a]
    assert _ids(bob.describe_instances()) == [b]
    assert sorted(_ids(admin.describe_instances())) == sorted([a, b])
    for call in (
        lambda: bob.terminate_instances(InstanceIds=[a]),
        lambda: bob.describe_instances(InstanceIds=[a]),
        lambda: bob.create_tags(Resources=[a], Tags=[{"Key": "k", "Value": "v"}]),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert _code(exc) == "InvalidInstanceID.NotFound"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert (
        admin.terminate_instances(InstanceIds=[a])["TerminatingInstances"][0]["CurrentState"][
            "Name"
        ]
        == "terminated"
    )
    with pytest.raises(ClientError) as exc:
        alice.describe_instances(InstanceIds=["i-zz"])
    assert _code(exc) == "InvalidInstanceID.Malformed"


def test_client_token_tags_and_refusals(cloud: Cloud) -> None:
    ec2 = cloud.client("alice")
    one = ec2.run_instances(ImageId=AMI, MinCount=2, MaxCount=2, ClientToken="tok-1")
    two = ec2.run_instances(ImageId=AMI, MinCount=2, MaxCount=2, ClientToken="tok-1")
    assert [i["InstanceId"] for i in one["Instances"]] == [
        i["InstanceId"] for i in two["Instances"]
    ]
    assert len(_ids(ec2.describe_instances())) == 2
    with pytest.raises(ClientError) as exc:
        ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, ClientToken="tok-1")
    assert _code(exc) == "IdempotentParameterMismatch"
    iid = one["Instances"][0]["InstanceId"]
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}])
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [iid]}])["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("a", "1"), ("b", "2")]
    ec2.delete_tags(Resources=[iid], Tags=[{"Key": "a", "Value": "other"}])  # value differs: kept
    ec2.delete_tags(Resources=[iid], Tags=[{"Key": "b"}])
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [iid]}])["Tags"]
    assert [(t["Key"], t["Value"]) for t in tags] == [("a", "1")]
    for kwargs, code in (
        (dict(ImageId="ami-00000000000000009", MinCount=1, MaxCount=1), "InvalidAMIID.NotFound"),
        (dict(ImageId="ami-x", MinCount=1, MaxCount=1), "InvalidAMIID.Malformed"),
        (
            dict(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="x9.huge"),
            "InvalidParameterValue",
        ),
        (dict(ImageId=AMI, MinCount=3, MaxCount=2), "InvalidParameterValue"),
        (dict(ImageId=AMI, MinCount=21, MaxCount=30), "InstanceLimitExceeded"),
        (
            dict(
                ImageId=AMI,
                MinCount=1,
                MaxCount=1,
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": [{"Key": "aws:x", "Value": "1"}]}
                ],
            ),
            "InvalidParameterValue",
        ),
    ):
        with pytest.raises(ClientError) as exc:
            ec2.run_instances(**kwargs)
        assert _code(exc) == code, kwargs
    with pytest.raises(ClientError) as exc:
        ec2.stop_instances(InstanceIds=[iid])
    assert _code(exc) == "UnsupportedOperation"
    with pytest.raises(ClientError) as exc:
        ec2.reboot_instances(InstanceIds=[iid])  # pending: not running
    assert _code(exc) == "IncorrectInstanceState"
    with pytest.raises(ClientError) as exc:
        ec2.describe_vpcs()
    assert _code(exc) == "InvalidAction"
    assert [r["RegionName"] for r in ec2.describe_regions()["Regions"]] == [REGION]
    assert [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]] == [
        "lxcloud-1a"
    ]
    types = {t["InstanceType"]: t for t in ec2.describe_instance_types()["InstanceTypes"]}
    assert types["t2.micro"]["MemoryInfo"]["SizeInMiB"] == 1024
    assert [i["ImageId"] for i in ec2.describe_images()["Images"]] == [AMI]


# -- authentication ---------------------------------------------------------------------------
def _signed(
    cloud: Cloud,
    user: str,
    body: str,
    when: datetime.datetime | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> AWSRequest:
    k = cloud.keys[user]
    req = AWSRequest(
        "POST",
        cloud.server.url,
        data=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    if when is not None and monkeypatch is not None:
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    botocore.auth.SigV4Auth(Credentials(k.access_key_id, k.secret), "ec2", REGION).add_auth(req)
    return req


def _send(url: str, req: AWSRequest | None = None, method: str = "POST") -> tuple[int, str]:
    r = urllib.request.Request(  # noqa: S310 - http to the test server
        url,
        data=req.body if req else None,
        headers=dict(req.headers.items()) if req else {},
        method=method,
    )
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:  # noqa: S310 - the test server
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _error(text: str) -> str:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(text)  # noqa: S314 - our own server's reply
    assert root.tag == "Response" and root.findtext("RequestID")
    return str(root.findtext("Errors/Error/Code"))


BODY = "Action=DescribeRegions&Version=2016-11-15"


def test_sigv4_refusals(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    url = cloud.server.url
    bob = cloud.keys["bob"]
    for region, key_id, secret, want in (
        (REGION, bob.access_key_id, "x" * 40, ("SignatureDoesNotMatch", 403)),  # wrong secret
        (REGION, "AKIAAAAAAAAAAAAAAAAA", "x", ("AuthFailure", 401)),  # unknown key
        ("us-east-1", bob.access_key_id, bob.secret, ("SignatureDoesNotMatch", 403)),  # scope
    ):
        c = boto3.client(
            "ec2",
            endpoint_url=url,
            region_name=region,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )
        with pytest.raises(ClientError) as exc:
            c.describe_regions()
        status = exc.value.response["ResponseMetadata"]["HTTPStatusCode"]
        assert (_code(exc), status) == want
    # a good raw request, then the same one tampered with
    assert _send(cloud.server.url, _signed(cloud, "alice", BODY))[0] == 200
    req = _signed(cloud, "alice", BODY)
    req.data = BODY.replace("DescribeRegions", "DescribeImages").encode()
    status, text = _send(cloud.server.url, req)
    assert (status, _error(text)) == (403, "SignatureDoesNotMatch")
    req = _signed(cloud, "alice", BODY)
    sig = req.headers["Authorization"]
    req.headers.replace_header("Authorization", sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    status, text = _send(cloud.server.url, req)
    assert (status, _error(text)) == (403, "SignatureDoesNotMatch")
    # a stale date, well signed
    stale = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(minutes=6)
    status, text = _send(cloud.server.url, _signed(cloud, "alice", BODY, stale, monkeypatch))
    assert (status, _error(text)) == (400, "RequestExpired")
    ahead = stale + datetime.timedelta(minutes=12)
    status, text = _send(cloud.server.url, _signed(cloud, "alice", BODY, ahead, monkeypatch))
    assert (status, _error(text)) == (400, "RequestExpired")
    monkeypatch.undo()
    # no signature; a malformed one
    status, text = _send(cloud.server.url + "?" + BODY, method="GET")
    assert (status, _error(text)) == (401, "MissingAuthenticationToken")
    req = _signed(cloud, "alice", BODY)
    req.headers.replace_header("Authorization", "AWS4-HMAC-SHA256 Credential=x")
    status, text = _send(cloud.server.url, req)
    assert (status, _error(text)) == (400, "IncompleteSignature")


def test_failures_throttled(cloud: Cloud) -> None:
    cloud.server.throttle = LoginThrottle(free=2, base=30.0)
    wrong = cloud.client("bob", secret="y" * 40, retries=0)
    codes = []
    for _ in range(4):
        with pytest.raises(ClientError) as exc:
            wrong.describe_regions()
        codes.append(_code(exc))
    assert codes == ["SignatureDoesNotMatch"] * 3 + ["RequestLimitExceeded"]
    good = _send(cloud.server.url, _signed(cloud, "bob", BODY))  # the address is locked too
    assert (good[0], _error(good[1])) == (503, "RequestLimitExceeded")


def test_front_serves_get_and_post_at_the_root_only(cloud: Cloud) -> None:
    assert _send(cloud.server.url + "other?" + BODY, method="GET")[0] == 404
    assert _send(cloud.server.url, method="PUT")[0] == 405
    req = _signed(cloud, "alice", BODY)
    req.headers.replace_header("Content-Type", "text/plain")
    status, text = _send(cloud.server.url, req)
    assert (status, _error(text)) == (400, "InvalidParameterValue")


def test_sigv4_query_string_form(cloud: Cloud) -> None:
    k = cloud.keys["alice"]
    req = AWSRequest("GET", cloud.server.url + "?" + BODY)
    botocore.auth.SigV4QueryAuth(
        Credentials(k.access_key_id, k.secret), "ec2", REGION, expires=60
    ).add_auth(req)
    status, text = _send(req.url, method="GET")
    assert status == 200 and "<regionName>lxcloud-1</regionName>" in text
    assert 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"' in text
    status, text = _send(req.url.replace("DescribeRegions", "DescribeImages"), method="GET")
    assert (status, _error(text)) == (403, "SignatureDoesNotMatch")


def test_sigv4_aws_example() -> None:
    """AWS's published get-vanilla example (SigV4 test suite)."""
    headers = {"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"}
    creq = sigv4.canonical_request(
        "GET", "/", "", headers, ("host", "x-amz-date"), hashlib.sha256(b"").hexdigest(), False
    )
    assert creq == (
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
        "host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b"
        "7852b855"
    )
    key = sigv4.signing_key(
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "service"
    )
    import hmac

    to_sign = (
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
        + hashlib.sha256(creq.encode()).hexdigest()
    )
    assert hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest() == (
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )
    assert sigv4.canonical_query("b=2&a=x%20y&a=1&X-Amz-Signature=s", True) == "a=1&a=x%20y&b=2"


# -- the aws CLI ------------------------------------------------------------------------------
def test_aws_cli(cloud: Cloud, tmp_path: Path) -> None:
    aws = Path(sys.executable).with_name("aws")
    k = cloud.keys["alice"]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": k.access_key_id,
        "AWS_SECRET_ACCESS_KEY": k.secret,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "HOME": str(tmp_path),
    }

    def run(*args: str) -> Any:
        out = subprocess.run(
            [str(aws), "--endpoint-url", cloud.server.url, "--output", "json", "ec2", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    (tmp_path / "ud.sh").write_text("#!/bin/sh\necho cli\n")
    made = run(
        "run-instances",
        "--image-id",
        AMI,
        "--count",
        "3",
        "--instance-type",
        "t2.small",
        "--user-data",
        f"file://{tmp_path / 'ud.sh'}",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=via,Value=cli}]",
    )
    ids = [i["InstanceId"] for i in made["Instances"]]
    assert len(ids) == 3
    with cloud.store.transaction() as conn:
        ctx = template.parse(vms.get(conn, _vm(ids[0]))["template"]).vectors("CONTEXT")[0]
    assert base64.b64decode(ctx["USER_DATA"]) == b"#!/bin/sh\necho cli\n"
    found = run(
        "describe-instances",
        "--filters",
        "Name=tag:via,Values=cli",
        "Name=instance-state-name,Values=pending",
    )
    assert sorted(_ids(found)) == sorted(ids)
    paged = run("describe-instances", "--page-size", "5", "--max-items", "2")
    assert len(_ids(paged)) == 2 and paged.get("NextToken")
    term = run("terminate-instances", "--instance-ids", *ids)
    assert {t["CurrentState"]["Name"] for t in term["TerminatingInstances"]} == {"terminated"}
    bad = subprocess.run(
        [str(aws), "--endpoint-url", cloud.server.url, "ec2", "describe-regions"],
        env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "SignatureDoesNotMatch" in bad.stderr


# -- keys, config, schema -----------------------------------------------------------------------
def test_keys_sealed_and_key_file(store: Store, tmp_path: Path) -> None:
    users.ensure_admin(store, "pw")
    path = tmp_path / "d" / "ec2.key"
    server_key = keys.load_server_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_server_key(path) == server_key  # not replaced
    k = keys.create(store, server_key, "oneadmin")
    with store.transaction() as conn:
        sealed = conn.execute(select(schema.ec2_keys.c.secret_sealed)).scalar_one()
    assert k.secret not in sealed
    owner = keys.lookup(store, server_key, k.access_key_id)
    assert owner is not None and owner.secret == k.secret and owner.is_admin
    assert keys.lookup(store, bytes(32), k.access_key_id) is None  # another server key
    with store.transaction() as conn:  # a sealed secret moved to another key id does not open
        conn.execute(update(schema.ec2_keys).values(access_key_id="AKIAMOVEDMOVEDMOVED2"))
    assert keys.lookup(store, server_key, "AKIAMOVEDMOVEDMOVED2") is None
    path.chmod(0o644)
    with pytest.raises(keys.KeyFileError, match="open to others"):
        keys.load_server_key(path)
    with pytest.raises(Exception, match="no user"):
        keys.create(store, server_key, "nobody")


def test_user_key_cli(sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(sqlite_url)
    store.create_schema()
    users.ensure_admin(store, "pw")
    kf = str(tmp_path / "k")
    assert main(["--db", sqlite_url, "user", "key", "create", "oneadmin", "--key-file", kf]) == 0
    out = capsys.readouterr().out
    key_id = out.split("AccessKeyId:")[1].split()[0]
    secret = out.split("SecretAccessKey:")[1].split()[0]
    assert len(secret) == 40
    assert main(["--db", sqlite_url, "user", "key", "list"]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and secret not in listed
    assert main(["--db", sqlite_url, "user", "key", "delete", key_id]) == 0
    assert main(["--db", sqlite_url, "user", "key", "delete", key_id]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert keys.list_keys(store) == []


def test_config_section() -> None:
    cfg = from_section(
        {
            "region": "site-1",
            "instance_types": {"big": {"vcpu": 8, "memory_mb": 32768}},
            "default_instance_type": "big",
        }
    )
    assert cfg.zone == "site-1a" and list(cfg.instance_types) == ["big"]
    for bad, match in (
        ({"regoin": "x"}, "unknown key"),
        ({"region": "A B"}, "ec2.region"),
        ({"default_instance_type": "zz.top"}, "not in instance_types"),
        ({"instance_types": {"x": {"vcpu": 0, "memory_mb": 1}}}, "vcpu"),
    ):
        with pytest.raises(InvalidInput, match=match):
            from_section(bad)


def test_schema_v2_database_gets_the_ec2_tables(db_url: str) -> None:
    store = Store(db_url)
    store.create_schema()
    for t in (schema.ec2_client_tokens, schema.ec2_tags, schema.ec2_keys):
        t.drop(store.engine)
    with store.transaction() as conn:
        conn.execute(update(schema.meta).values(value="2"))
    store.create_schema()
    with store.transaction() as conn:
        assert conn.execute(select(schema.meta.c.value)).scalar_one() == "3"
        assert conn.execute(select(schema.ec2_tags)).all() == []
    store.drop_schema()


def test_ec2_stage_in_the_daemon(store: Store, tmp_path: Path) -> None:
    """The stage reads the config file's ``ec2`` section, listens, stops."""
    from lxcloud_py.config import effective, load_config
    from lxcloud_py.daemon.core import StageContext
    from lxcloud_py.daemon.registry import check_stages, stage_class

    users.ensure_admin(store, "pw")
    conf = tmp_path / "lxcloud.yml"
    conf.write_text(
        json.dumps({"ec2": {"listen": "127.0.0.1:0", "region": "site-9",
                            "key_file": str(tmp_path / "k")}})
    )  # fmt: skip
    settings = effective(load_config(conf), environ={})
    assert check_stages(["api", "ec2"]) == ["api", "ec2"]
    stage = stage_class("ec2")(StageContext(store, settings))
    stage.start()
    try:
        k = keys.create(store, keys.load_server_key(tmp_path / "k"), "oneadmin")
        c = boto3.client(
            "ec2",
            endpoint_url=stage.server.url,
            region_name="site-9",
            aws_access_key_id=k.access_key_id,
            aws_secret_access_key=k.secret,
        )
        assert [z["ZoneName"] for z in c.describe_availability_zones()["AvailabilityZones"]] == [
            "site-9a"
        ]
    finally:
        stage.request_stop()
        assert stage.join(10)
        stage.close()
    assert not stage.alive()
