"""names.py: every name that reaches a path, XML or a command is validated."""

from __future__ import annotations

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    check_under,
    path_under,
    validate_abs_path,
    validate_hostname,
    validate_ip,
    validate_ipv4,
    validate_mac,
    validate_name,
    validate_netmask,
    validate_prefix,
    validate_uuid,
)

BAD_NAMES = [
    "",
    "a/b",
    "/abs",
    "..",
    "a..b",
    "../etc",
    "has space",
    "quote'd",
    'dq"x',
    "new\nline",
    "cr\rx",
    "tab\tx",
    "nul\0x",
    "semi;colon",
    "amp&x",
    "pipe|x",
    "dollar$x",
    "back`tick",
    "paren(x)",
    "glob*",
    "lt<x",
    "ümlaut",
    "emoji\u2603",
    "-leading-dash",
    ".hidden",
    "_under",
    "x" * 64,
]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_are_refused_naming_the_item(bad: str) -> None:
    with pytest.raises(InvalidName) as exc:
        validate_name(bad, "vm name")
    assert exc.value.what == "vm name"
    assert "vm name" in str(exc.value)
    assert exc.value.value == bad


@pytest.mark.parametrize("good", ["a", "lxvm-0001", "web.01_x", "A" * 63, "9lives", "a.b-c_d"])
def test_good_names_pass_unchanged(good: str) -> None:
    assert validate_name(good) == good


def test_non_string_name_is_refused() -> None:
    with pytest.raises(InvalidName):
        validate_name(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidName):
        validate_name(12)  # type: ignore[arg-type]


def test_mac_is_canonicalized_and_validated() -> None:
    assert validate_mac("52:54:00:AB:cd:01") == "52:54:00:ab:cd:01"
    assert validate_mac("52-54-00-ab-cd-01") == "52:54:00:ab:cd:01"
    for bad in ["52:54:00:ab:cd", "52:54:00:ab:cd:01:02", "zz:54:00:ab:cd:01", "01:00:5e:00:00:01",
                "52:54:00:ab:cd:01;reboot", "", "5254.00ab.cd01"]:
        with pytest.raises(InvalidName, match="mac"):
            validate_mac(bad)


def test_ip_and_masks() -> None:
    assert validate_ipv4("10.0.0.5") == "10.0.0.5"
    assert validate_ip("fe80::1") == "fe80::1"
    for bad in ["10.0.0.256", "10.0.0", "10.0.0.1 ; x", "", "::1x"]:
        with pytest.raises(InvalidName):
            validate_ipv4(bad)
    assert validate_netmask("24") == "255.255.255.0"
    assert validate_netmask("255.255.0.0") == "255.255.0.0"
    with pytest.raises(InvalidName):
        validate_netmask("255.0.255.0")
    assert validate_prefix(16) == 16
    for bad in [33, -1, "x", "24; ls"]:
        with pytest.raises(InvalidName):
            validate_prefix(bad)


def test_uuid() -> None:
    assert validate_uuid("0E5B3B0C-1111-2222-3333-444455556666") == (
        "0e5b3b0c-1111-2222-3333-444455556666"
    )
    with pytest.raises(InvalidName):
        validate_uuid("not-a-uuid")


@pytest.mark.parametrize(
    "bad",
    ["relative/path", "/a/../b", "/a/b c", "/a/b\nc", "/a/'b'", "/a/$(x)", "/a/b;c", "", "/ä"],
)
def test_abs_path_refuses(bad: str) -> None:
    with pytest.raises(InvalidName):
        validate_abs_path(bad, "image")


def test_abs_path_normalizes_and_allows_dot_dirs() -> None:
    assert validate_abs_path("/work/main/.cache/test-image//golden.raw") == (
        "/work/main/.cache/test-image/golden.raw"
    )


def test_path_under_root(tmp_path) -> None:
    assert path_under(str(tmp_path), "x.qcow2") == str(tmp_path / "x.qcow2")
    for bad in ["../x", "a/b", "..", ""]:
        with pytest.raises(InvalidName):
            path_under(str(tmp_path), bad)


def test_check_under_follows_symlinks(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok").write_text("x")
    (root / "escape").symlink_to("/etc/passwd")
    assert check_under(str(root), str(root / "ok")) == str(root / "ok")
    with pytest.raises(InvalidName, match="not under"):
        check_under(str(root), str(root / "escape"))
    with pytest.raises(InvalidName, match="not under"):
        check_under(str(root), "/etc/passwd")


def test_hostname() -> None:
    assert validate_hostname("wn-0001.farm.example.org") == "wn-0001.farm.example.org"
    for bad in ["", "-x.org", "x-.org", "a..b", "a b", "x;y", "x_y", "a" * 64, "a." * 130, "ü.org"]:
        with pytest.raises(InvalidName, match="lease name"):
            validate_hostname(bad, "lease name")
