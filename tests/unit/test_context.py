"""context: variable validation, context.sh rendering, and the ISO round trip (genisoimage and
isoinfo are quick local tools, no daemon)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import context as ctx
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName

VARS = {
    "NAME": "lxvm-0001",
    "ETH0_IP": "10.10.0.11",
    "ETH0_MASK": "255.255.255.0",
    "ETH0_GATEWAY": "10.10.0.1",
    "ETH0_MAC": "52:54:00:0a:00:0b",
    "ETH0_DNS": "10.10.0.1",
    "LIFETIME": 86400,
    "LXCLOUD_API": "http://10.10.0.1:2633/RPC2",
    "VMID": 17,
    "LXCLOUD_TOKEN": "s3cr3t-token",
}


def run(argv):
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    return p.returncode, p.stdout, p.stderr


needs_tools = pytest.mark.skipif(
    not (shutil.which("genisoimage") and shutil.which("isoinfo")),
    reason="genisoimage/isoinfo not installed (scripts/bootstrap installs genisoimage)",
)


def test_render_sorted_key_value_lines() -> None:
    text = ctx.render(ctx.validate_variables(VARS))
    lines = text.splitlines()
    assert lines[0].startswith("#")
    body = lines[1:]
    assert body == sorted(body)
    assert "LIFETIME='86400'" in body and "VMID='17'" in body
    assert "ETH0_MAC='52:54:00:0a:00:0b'" in body
    assert len(body) == len(VARS)


@pytest.mark.parametrize(
    "key", ["name", "1ABC", "A-B", "A B", "A;B", "", "_X", "É", "A" * 65, "X'", "X\n"]
)
def test_bad_keys_refused(key: str) -> None:
    with pytest.raises(ctx.ContextError, match="context variable name"):
        ctx.validate_variables({key: "v"})


@pytest.mark.parametrize(
    ("value", "what"),
    [("it's", "single quote"), ("a\nb", "newline"), ("a\rb", "carriage return"),
     ("a\0b", "NUL"), ("x" * 4097, "longer than")],
)
def test_bad_values_refused_naming_the_key(value: str, what: str) -> None:
    with pytest.raises(ctx.ContextError, match=what) as exc:
        ctx.validate_variables({"NAME": "ok", "ETH0_DNS": value})
    assert "ETH0_DNS" in exc.value.msg


def test_value_types() -> None:
    assert ctx.validate_variables({"A": True, "B": 3, "C": None}) == {"A": "YES", "B": "3", "C": ""}
    with pytest.raises(ctx.ContextError, match="must be a string or number"):
        ctx.validate_variables({"A": ["x"]})


def test_masked_hides_secrets() -> None:
    text = ctx.render(ctx.validate_variables(VARS))
    m = ctx.masked(text)
    assert "s3cr3t" not in m and "LXCLOUD_TOKEN='********'" in m
    assert "NAME='lxvm-0001'" in m


def test_spec_refuses_bad_names() -> None:
    for bad in ["../x.iso", "a b", "x;y", "x/y"]:
        with pytest.raises(InvalidName, match="context disk name"):
            ctx.ContextSpec(bad, "/tmp")


@needs_tools
def test_iso_round_trip_idempotent_and_atomic(tmp_path) -> None:
    spec = ctx.ContextSpec("c.iso", str(tmp_path))
    changed, before, after = ctx.ensure_present(run, spec, VARS, check_mode=True)
    assert changed and before is None and not os.path.exists(spec.path)

    changed, before, after = ctx.ensure_present(run, spec, VARS)
    assert changed and before is None
    assert sorted(os.listdir(tmp_path)) == ["c.iso"]  # no temp dir left
    assert os.stat(spec.path).st_mode & 0o777 == 0o600
    volid, text = ctx.read_iso_context(run, spec.path)
    assert volid == "CONTEXT" and text == after
    mtime = os.stat(spec.path).st_mtime_ns

    changed, before, _ = ctx.ensure_present(run, spec, dict(VARS))
    assert not changed and before == after
    assert os.stat(spec.path).st_mtime_ns == mtime

    new = dict(VARS, ETH0_IP="10.10.0.12")
    changed, before, after = ctx.ensure_present(run, spec, new, check_mode=True)
    assert changed and "10.10.0.11" in before and "10.10.0.12" in after
    assert ctx.read_iso_context(run, spec.path)[1] == before
    changed, _, _ = ctx.ensure_present(run, spec, new)
    assert changed and "ETH0_IP='10.10.0.12'" in ctx.read_iso_context(run, spec.path)[1]

    assert ctx.ensure_absent(spec, check_mode=True) and os.path.exists(spec.path)
    assert ctx.ensure_absent(spec) and not os.path.exists(spec.path)
    assert not ctx.ensure_absent(spec)


@needs_tools
def test_foreign_file_is_replaced_and_failed_build_leaves_nothing(tmp_path) -> None:
    spec = ctx.ContextSpec("c.iso", str(tmp_path))
    (tmp_path / "c.iso").write_text("not an iso")
    changed, before, _ = ctx.ensure_present(run, spec, VARS)
    assert changed and before == ""

    def failing(argv):
        if argv[0] == "genisoimage":
            return 1, "", "genisoimage: boom"
        return run(argv)

    with pytest.raises(ctx.ContextError, match="boom") as exc:
        ctx.ensure_present(failing, spec, dict(VARS, NAME="other"))
    assert exc.value.result["rc"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c.iso"]
    assert "NAME='lxvm-0001'" in ctx.read_iso_context(run, spec.path)[1]


@pytest.mark.parametrize(
    ("key", "value"),
    [("NAME", "bad name"), ("NAME", "-x"), ("ETH0_IP", "10.0.0.300"), ("ETH0_MASK", "x"),
     ("ETH0_GATEWAY", "10.0.0"), ("ETH0_MAC", "52:54:00:00:00"), ("ETH0_DNS", "10.0.0.1;x"),
     ("VMID", "12a"), ("LIFETIME", "-1")],
)
def test_known_variables_are_checked_for_their_use(key: str, value: str) -> None:
    with pytest.raises(ctx.ContextError, match=f"context variable {key}"):
        ctx.validate_variables(dict(VARS, **{key: value}))


def test_known_variables_may_be_empty() -> None:
    got = ctx.validate_variables(dict(VARS, ETH0_GATEWAY="", ETH0_DNS="10.0.0.1, 10.0.0.2"))
    assert got["ETH0_GATEWAY"] == "" and got["ETH0_DNS"] == "10.0.0.1, 10.0.0.2"
