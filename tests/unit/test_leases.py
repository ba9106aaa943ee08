"""Lease import/export on both backends: every bad-input class, all-or-nothing, re-import,
changed files, pruning, dnsmasq export, claims."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sched_rows as rows
from sqlalchemy import func, select

from lxcloud_py import leases
from lxcloud_py.cli import main
from lxcloud_py.store import Store, schema

HEADER = "ip,mac,name,host\n"
GOOD = [
    "10.0.0.1,52:54:00:00:00:01,vm1.farm.example,hv1",
    "10.0.0.2,52:54:00:00:00:02,vm2.farm.example,hv1",
    "10.0.0.3,52:54:00:00:00:03,vm3.farm.example,hv2",
]


def write(tmp_path: Path, lines: list[str], name: str = "leases.csv", header: str = HEADER) -> Path:
    p = tmp_path / name
    p.write_text(header + "".join(line + "\n" for line in lines))
    return p


def all_leases(store: Store) -> list[tuple]:
    with store.transaction() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(
                    schema.leases.c.ip,
                    schema.leases.c.mac,
                    schema.leases.c.name,
                    schema.leases.c.host,
                    schema.leases.c.state,
                    schema.leases.c.vm_id,
                    schema.leases.c.updated,
                ).order_by(schema.leases.c.ip)
            )
        ]


def count(store: Store) -> int:
    with store.transaction() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.leases)).scalar_one())


def import_errors(store: Store, path: Path, **kw) -> list[str]:
    with pytest.raises(leases.LeaseFileError) as info:
        leases.import_leases(store, path, **kw)
    return info.value.errors


# -- every bad-input class: reported with FILE:LINE, nothing imported ----------------------------
BAD_ROWS = [
    ("bad IP", "10.0.0.300,52:54:00:00:00:09,vm9.farm.example,hv1", "bad IP '10.0.0.300'"),
    ("IP not an address", "vm9,52:54:00:00:00:09,vm9.farm.example,hv1", "bad IP 'vm9'"),
    ("bad MAC", "10.0.0.9,zz:54:00:00:00:09,vm9.farm.example,hv1", "bad MAC 'zz:54:00:00:00:09'"),
    ("short MAC", "10.0.0.9,52:54:00:00:09,vm9.farm.example,hv1", "bad MAC '52:54:00:00:09'"),
    (
        "multicast MAC",
        "10.0.0.9,01:00:5e:00:00:09,vm9.farm.example,hv1",
        "bad MAC '01:00:5e:00:00:09': multicast",
    ),
    ("bad DNS name", "10.0.0.9,52:54:00:00:00:09,vm_9.farm.example,hv1", "bad DNS name"),
    ("DNS label dash", "10.0.0.9,52:54:00:00:00:09,-vm9.farm.example,hv1", "bad DNS name"),
    ("host with slash", "10.0.0.9,52:54:00:00:00:09,vm9.farm.example,../etc", "bad host name"),
    ("host with space", "10.0.0.9,52:54:00:00:00:09,vm9.farm.example,hv 1", "bad host name"),
    ("host shell meta", "10.0.0.9,52:54:00:00:00:09,vm9.farm.example,hv1;reboot", "bad host name"),
    ("missing field", "10.0.0.9,52:54:00:00:00:09,vm9.farm.example", "missing field(s) 'host'"),
    ("empty field", "10.0.0.9,,vm9.farm.example,hv1", "missing field 'mac'"),
    ("extra field", "10.0.0.9,52:54:00:00:00:09,vm9.farm.example,hv1,x", "extra field(s) 'x'"),
    # issue 14: addresses no VM may hold
    ("unspecified", "0.0.0.0,52:54:00:00:00:09,vm9.farm.example,hv1", "the unspecified address"),
    ("loopback", "127.0.0.5,52:54:00:00:00:09,vm9.farm.example,hv1", "a loopback address"),
    ("multicast", "224.0.0.9,52:54:00:00:00:09,vm9.farm.example,hv1", "a multicast address"),
    ("link-local", "169.254.1.9,52:54:00:00:00:09,vm9.farm.example,hv1", "a link-local address"),
    ("limited broadcast", "255.255.255.255,52:54:00:00:00:09,vm9.farm.example,hv1",
     "the limited broadcast address"),
    ("reserved", "240.0.0.9,52:54:00:00:00:09,vm9.farm.example,hv1", "a reserved address"),
    ("network address", "10.0.0.0,52:54:00:00:00:09,vm9.farm.example,hv1",
     "the network address of 10.0.0.0/24"),
    ("broadcast address", "10.0.0.255,52:54:00:00:00:09,vm9.farm.example,hv1",
     "the broadcast address of 10.0.0.0/24"),
    (
        "duplicate IP",
        "10.0.0.1,52:54:00:00:00:09,vm9.farm.example,hv1",
        "duplicate IP 10.0.0.1 (already on line 2)",
    ),
    (
        "duplicate MAC (other spelling)",
        "10.0.0.9,52-54-00-00-00-01,vm9.farm.example,hv1",
        "duplicate MAC 52:54:00:00:00:01 (already on line 2)",
    ),
    (
        "duplicate name (other case)",
        "10.0.0.9,52:54:00:00:00:09,VM1.farm.example.,hv1",
        "duplicate DNS name vm1.farm.example (already on line 2)",
    ),
]


@pytest.mark.parametrize(("bad", "expect"), [b[1:] for b in BAD_ROWS], ids=[b[0] for b in BAD_ROWS])
def test_bad_row_reported_with_line_and_nothing_imported(
    store: Store, tmp_path: Path, bad: str, expect: str
) -> None:
    path = write(tmp_path, [*GOOD, bad])  # header is line 1, the bad row line 5
    errors = import_errors(store, path)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}:5: "), errors
    assert expect in errors[0]
    assert count(store) == 0


def test_bad_header(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, header="ip,mac,hostname,host\n")
    (err,) = import_errors(store, path)
    assert err.startswith(f"{path}:1: bad header")
    assert "missing column(s) 'name'" in err and "unknown column(s) 'hostname'" in err
    assert count(store) == 0


def test_every_bad_row_is_reported_together(store: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            GOOD[0],
            "10.0.0.300,52:54:00:00:00:09,vm9.farm.example,hv1",
            GOOD[1],
            "10.0.0.10,01:00:00:00:00:10,vm10.farm.example,hv/1",
            "10.0.0.11,52:54:00:00:00:02,vm11.farm.example,hv1",
        ],
    )
    errors = import_errors(store, path)
    assert [e.split(": ")[0] for e in errors] == [
        f"{path}:3",
        f"{path}:5",
        f"{path}:5",
        f"{path}:6",
    ]
    assert "bad MAC" in errors[1] and "bad host name 'hv/1'" in errors[2]
    assert "duplicate MAC 52:54:00:00:00:02 (already on line 4)" in errors[3]
    assert count(store) == 0


@pytest.mark.parametrize("column", ["mac", "name"])
def test_clash_with_other_lease_in_db(store: Store, tmp_path: Path, column: str) -> None:
    leases.import_leases(store, write(tmp_path, GOOD[:1], name="first.csv"))
    before = all_leases(store)
    clash = {
        "mac": "10.0.0.9,52:54:00:00:00:01,vm9.farm.example,hv1",
        "name": "10.0.0.9,52:54:00:00:00:09,vm1.farm.example,hv1",
    }[column]
    path = write(tmp_path, [GOOD[1], clash])
    (err,) = import_errors(store, path)
    label = {"mac": "MAC 52:54:00:00:00:01", "name": "DNS name vm1.farm.example"}[column]
    assert err.startswith(f"{path}:3: {label} is held by lease 10.0.0.1"), err
    assert all_leases(store) == before  # nothing of the good rows either


def test_clash_with_lease_missing_from_file_needs_prune(store: Store, tmp_path: Path) -> None:
    leases.import_leases(store, write(tmp_path, GOOD, name="first.csv"))
    # vm1 moves to a new IP: the old lease still holds its MAC and name unless pruned.
    moved = "10.0.0.101,52:54:00:00:00:01,vm1.farm.example,hv1"
    path = write(tmp_path, [moved, GOOD[1], GOOD[2]])
    errors = import_errors(store, path)
    assert len(errors) == 2 and all(e.startswith(f"{path}:2: ") for e in errors)
    assert "--prune removes it" in errors[0]
    report = leases.import_leases(store, path, prune=True)
    assert [r.ip for r in report.added] == ["10.0.0.101"]
    assert [p["ip"] for p in report.pruned] == ["10.0.0.1"]
    assert {r[0] for r in all_leases(store)} == {"10.0.0.101", "10.0.0.2", "10.0.0.3"}


def test_unreadable_and_empty_files(store: Store, tmp_path: Path) -> None:
    with pytest.raises(leases.InvalidInput, match="cannot read lease file"):
        leases.import_leases(store, tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    (err,) = import_errors(store, empty)
    assert err.startswith(f"{empty}:1: empty lease file")


# -- good files ----------------------------------------------------------------------------------
def test_import_normalises_and_reimport_changes_nothing(store: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            "# the farm's leases",
            "10.0.0.1 , 52-54-00-AA-BB-01 , VM1.Farm.Example. , hv1",
            "",
            *GOOD[1:],
        ],
    )
    report = leases.import_leases(store, path)
    assert (len(report.added), len(report.updated), report.unchanged) == (3, 0, 0)
    first = all_leases(store)
    assert first[0][:5] == ("10.0.0.1", "52:54:00:aa:bb:01", "vm1.farm.example", "hv1", "free")
    again = leases.import_leases(store, path)
    assert again.summary() == "0 added, 0 updated, 3 unchanged"
    assert not again.changed
    assert all_leases(store) == first  # not even the timestamps moved


def test_yaml_file(store: Store, tmp_path: Path) -> None:
    p = tmp_path / "leases.yaml"
    p.write_text(
        "# leases\n"
        "- ip: 10.0.0.1\n"
        "  mac: 52:54:00:00:00:01\n"  # unquoted: YAML 1.1 would read a sexagesimal number
        "  name: vm1.farm.example\n"
        "  host: hv1\n"
        "- {ip: 10.0.0.2, mac: '52:54:00:00:00:02', name: vm2.farm.example, host: hv1}\n"
    )
    report = leases.import_leases(store, p)
    assert [r.mac for r in report.added] == ["52:54:00:00:00:01", "52:54:00:00:00:02"]
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "- ip: 10.0.0.3\n"
        "  mac: 52:54:00:00:00:03\n"
        "  name: vm3.farm.example\n"
        "- ip: 10.0.0.4\n"
        "  mac: 52:54:00:00:00:04\n"
        "  name: vm4.farm.example\n"
        "  host: hv1\n"
        "  rack: r7\n"
        "- ip: 10.0.0.5\n"
        "  mac: ff:ff:ff:ff:ff:ff\n"
        "  name: vm5.farm.example\n"
        "  host: hv1\n"
    )
    errors = import_errors(store, bad)
    assert errors == [
        f"{bad}:1: missing field(s) 'host'",
        f"{bad}:4: extra field(s) 'rack'",
        f"{bad}:9: bad MAC 'ff:ff:ff:ff:ff:ff': multicast MAC address",
    ]
    assert count(store) == 2


def test_changed_file_updates_free_and_reports_used(store: Store, tmp_path: Path) -> None:
    leases.import_leases(store, write(tmp_path, GOOD, name="v1.csv"))
    with store.transaction() as conn:
        vm = rows.vm(conn, "busy", image_name=None)
        lid = conn.execute(
            select(schema.leases.c.id).where(schema.leases.c.ip == "10.0.0.2")
        ).scalar_one()
        assert leases.claim_lease(conn, lid, vm)
    changed = [
        "10.0.0.1,52:54:00:00:00:01,vm1.farm.example,hv3",  # free: moves to hv3
        "10.0.0.2,52:54:00:00:00:02,vm2.farm.example,hv3",  # used: reported, kept on hv1
        GOOD[2],
    ]
    report = leases.import_leases(store, write(tmp_path, changed, name="v2.csv"))
    assert [r.ip for r, _ in report.updated] == ["10.0.0.1"]
    assert [(r.ip, old["vm_id"]) for r, old in report.in_use] == [("10.0.0.2", vm)]
    assert report.summary() == "0 added, 1 updated, 1 unchanged, 1 in use (not changed)"
    hosts = {r[0]: (r[3], r[4], r[5]) for r in all_leases(store)}
    assert hosts == {
        "10.0.0.1": ("hv3", "free", None),
        "10.0.0.2": ("hv1", "used", vm),
        "10.0.0.3": ("hv2", "free", None),
    }


def test_swapped_names_between_free_leases(store: Store, tmp_path: Path) -> None:
    leases.import_leases(store, write(tmp_path, GOOD, name="v1.csv"))
    swapped = [
        "10.0.0.1,52:54:00:00:00:02,vm2.farm.example,hv1",
        "10.0.0.2,52:54:00:00:00:01,vm1.farm.example,hv1",
        GOOD[2],
    ]
    report = leases.import_leases(store, write(tmp_path, swapped, name="v2.csv"))
    assert len(report.updated) == 2
    got = {r[0]: (r[1], r[2]) for r in all_leases(store)}
    assert got["10.0.0.1"] == ("52:54:00:00:00:02", "vm2.farm.example")


def test_missing_leases_reported_pruned_only_when_free(store: Store, tmp_path: Path) -> None:
    leases.import_leases(store, write(tmp_path, GOOD, name="v1.csv"))
    with store.transaction() as conn:
        vm = rows.vm(conn, "busy", image_name=None)
        lid = conn.execute(
            select(schema.leases.c.id).where(schema.leases.c.ip == "10.0.0.3")
        ).scalar_one()
        assert leases.claim_lease(conn, lid, vm)
    only_first = write(tmp_path, GOOD[:1], name="v2.csv")
    report = leases.import_leases(store, only_first)
    assert [m["ip"] for m in report.missing] == ["10.0.0.2", "10.0.0.3"]
    assert count(store) == 3
    report = leases.import_leases(store, only_first, prune=True)
    assert [p["ip"] for p in report.pruned] == ["10.0.0.2"]
    assert [m["ip"] for m in report.missing] == ["10.0.0.3"]  # in use: kept
    assert {r[0] for r in all_leases(store)} == {"10.0.0.1", "10.0.0.3"}


def test_dry_run_changes_nothing(store: Store, tmp_path: Path) -> None:
    report = leases.import_leases(store, write(tmp_path, GOOD), dry_run=True)
    assert len(report.added) == 3
    assert count(store) == 0


# -- export, list, claims ------------------------------------------------------------------------
def test_export_dnsmasq_and_csv_roundtrip(store: Store, tmp_path: Path) -> None:
    lines = [GOOD[2], "10.0.0.10,52:54:00:00:00:0a,vm10.farm.example,hv1", *GOOD[:2]]
    leases.import_leases(store, write(tmp_path, lines))
    out = tmp_path / "dhcp-hosts"
    out.write_text("old\n")
    assert main(["--db", store.url, "lease", "export", "--format", "dnsmasq", "-o", str(out)]) == 0
    text = out.read_text().splitlines()
    assert text[0].startswith("#")
    assert text[1:] == [  # numeric IP order, mac,ip,name
        "52:54:00:00:00:01,10.0.0.1,vm1.farm.example",
        "52:54:00:00:00:02,10.0.0.2,vm2.farm.example",
        "52:54:00:00:00:03,10.0.0.3,vm3.farm.example",
        "52:54:00:00:00:0a,10.0.0.10,vm10.farm.example",
    ]
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("lxcloud.db"))
    assert left == ["dhcp-hosts", "leases.csv"]  # no temporary file left behind
    csv_out = tmp_path / "export.csv"
    assert main(["--db", store.url, "lease", "export", "--format", "csv", "-o", str(csv_out)]) == 0
    assert leases.import_leases(store, csv_out).summary() == "0 added, 0 updated, 4 unchanged"


def test_prefix_decides_network_and_broadcast(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, ["10.0.1.0,52:54:00:00:00:09,vm9.farm.example,hv1"])
    assert "network address of 10.0.1.0/24" in import_errors(store, path)[0]
    assert leases.import_leases(store, path, prefix=16).added  # a host address in a /16


def test_non_utf8_line_is_named(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADER.encode() + GOOD[0].encode() + b"\n10.0.0.2,52:54:00:00:00:02,"
                     b"vm\xe9.farm.example,hv1\n")
    with pytest.raises(leases.InvalidInput, match=rf"{re.escape(str(path))}:3: not UTF-8 text"):
        leases.import_leases(store, path)
    assert count(store) == 0


def test_unregistered_hosts_warn_or_fail_with_strict(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD)  # hosts hv1, hv2: not registered in this empty store
    errors = import_errors(store, path, strict=True)
    assert errors == [f"{path}:2: host hv1 is not registered", f"{path}:3: host hv1 is not "
                      "registered", f"{path}:4: host hv2 is not registered"]
    assert count(store) == 0
    assert main(["--db", store.url, "lease", "import", "--strict", str(path)]) == 2
    assert main(["--db", store.url, "lease", "import", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}:4: host hv2 is not registered (yet)" in err
    assert count(store) == 3


def test_cli_import_reports_errors_and_summary(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, [GOOD[0], "10.0.0.7,zz:00:00:00:00:07,vm7.farm.example,hv1"])
    assert main(["--db", store.url, "lease", "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: bad MAC 'zz:00:00:00:00:07'" in err and "nothing imported" in err
    assert count(store) == 0
    good = write(tmp_path, GOOD, name="good.csv")
    assert main(["--db", store.url, "lease", "import", str(good)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^added +10\.0\.0\.1 +52:54:00:00:00:01", out, re.M)
    assert out.rstrip().endswith("3 added, 0 updated, 0 unchanged")
    assert main(["--db", store.url, "lease", "import", str(good)]) == 0
    assert capsys.readouterr().out.strip() == "0 added, 0 updated, 3 unchanged"
    assert main(["--db", store.url, "lease", "list", "--host", "hv2"]) == 0
    listed = capsys.readouterr().out
    assert "10.0.0.3" in listed and "10.0.0.1" not in listed and "1 lease" in listed


def test_claim_is_exclusive_and_release_frees(store: Store, tmp_path: Path) -> None:
    leases.import_leases(store, write(tmp_path, GOOD))
    with store.transaction() as conn:
        a, b = rows.vm(conn, "a", image_name=None), rows.vm(conn, "b", image_name=None)
        (first,) = [x["id"] for x in leases.leases_for_host(conn, "hv2")]
        assert leases.claim_lease(conn, first, a)
        assert not leases.claim_lease(conn, first, b)
    with store.transaction() as conn:
        assert leases.lease_of_vm(conn, a)["ip"] == "10.0.0.3"
        assert leases.release_lease(conn, a) == first
        assert leases.release_lease(conn, a) is None
        assert leases.list_leases(conn, state="used") == []
        assert leases.claim_lease(conn, first, b)


def test_format_by_content(store: Store, tmp_path: Path) -> None:
    y = tmp_path / "leases.txt"
    y.write_text("# yaml\n- {ip: 10.0.0.1, mac: '52:54:00:00:00:01', name: a.example, host: hv1}\n")
    c = tmp_path / "leases"
    c.write_text(HEADER + "10.0.0.2,52:54:00:00:00:02,b.example,hv1\n")
    assert [r.ip for r in leases.import_leases(store, y).added] == ["10.0.0.1"]
    assert [r.ip for r in leases.import_leases(store, c, prune=False).added] == ["10.0.0.2"]
