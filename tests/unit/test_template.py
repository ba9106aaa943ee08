"""The OpenNebula template parser: syntax, vectors, quoting, XML templates, errors by line."""

from __future__ import annotations

import pytest

from lxcloud_py import template
from lxcloud_py.template import TemplateError


def test_scalars_vectors_comments_and_case() -> None:
    tpl = template.parse(
        """
        # a worker
        name   = "worker-1"   # trailing comment
        CPU=0.5
        Memory = 1024
        DISK = [ IMAGE = "golden", target = vda ]
        DISK = [
            IMAGE = "scratch" ,
            SIZE = 10 ]
        CONTEXT = [ NETWORK = "YES", SSH_PUBLIC_KEY = "ssh-ed25519 AAAA x@y" ]
        """
    )
    assert tpl.get("NAME") == "worker-1"
    assert tpl.get("cpu") == "0.5"
    assert tpl.get("MEMORY") == "1024"
    disks = tpl.vectors("DISK")
    assert disks == [{"IMAGE": "golden", "TARGET": "vda"}, {"IMAGE": "scratch", "SIZE": "10"}]
    assert tpl.vectors("CONTEXT")[0]["SSH_PUBLIC_KEY"] == "ssh-ed25519 AAAA x@y"
    assert tpl.keys() == ["NAME", "CPU", "MEMORY", "DISK", "CONTEXT"]


def test_quotes_escapes_and_multiline_values() -> None:
    tpl = template.parse(
        'A = "say \\"hi\\" to C:\\\\temp"\n'
        'B = "line one\nline two # not a comment"\n'
        'C = [ X = "a, b ] c", Y = "" ]\n'
    )
    assert tpl.get("A") == 'say "hi" to C:\\temp'
    assert tpl.get("B") == "line one\nline two # not a comment"
    assert tpl.vectors("C") == [{"X": "a, b ] c", "Y": ""}]


def test_other_backslashes_are_kept() -> None:
    assert template.parse('A = "a\\nb"').get("A") == "a\\nb"


def test_round_trip_through_text_and_xml() -> None:
    src = 'NAME = "x y"\nDISK = [ IMAGE = golden, NOTE = "a \\"q\\"\nz" ]\nDISK = [ IMAGE = b ]\n'
    tpl = template.parse(src)
    again = template.parse(tpl.to_text())
    assert again.items == tpl.items
    from xml.etree import ElementTree as ET

    xml_text = ET.tostring(tpl.to_xml(), encoding="unicode")
    assert template.parse(xml_text).items == tpl.items


def test_xml_template() -> None:
    tpl = template.parse(
        "<TEMPLATE><NAME>w</NAME><CPU>2</CPU>"
        "<DISK><IMAGE>golden</IMAGE></DISK><DISK><IMAGE>other</IMAGE></DISK>"
        "<CONTEXT><A>1 &amp; 2</A></CONTEXT></TEMPLATE>"
    )
    assert tpl.get("NAME") == "w"
    assert [d["IMAGE"] for d in tpl.vectors("DISK")] == ["golden", "other"]
    assert tpl.vectors("CONTEXT") == [{"A": "1 & 2"}]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('NAME = "ok"\nCPU 2\n', 2, "expected '='"),
        ('NAME = "ok"\n\nA = "never closed\nB = 1\n', 3, "unterminated quoted value of A"),
        ("DISK = [ IMAGE = x,\n  SIZE = 1\n", 1, "unterminated vector DISK"),
        ("A = [ B = [ C = 1 ] ]", 1, "cannot nest"),
        ("A = [ B = 1 C = 2 ]", 1, "expected ',' or ']'"),
        ("A = \n", 1, "missing value for A"),
        ("A = x y\n", 1, "after the value of A"),
        ("1A = x\n", 1, "expected an attribute name"),
        ("A = [ B = 1, B = 2 ]", 1, "given twice"),
        ("A = [ = 1 ]", 1, "inside A"),
        ("\n\nA = ok\nB = \x01\n", 4, "control character"),
        ('A = x"y\n', 1, "quote the value"),
    ],
)
def test_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(TemplateError) as exc:
        template.parse(text)
    assert exc.value.line == line
    assert f"line {line}:" in str(exc.value)
    assert words in str(exc.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("<TEMPLATE><A>", "not well-formed"),
        ("<VM><A>1</A></VM>", "root must be <TEMPLATE>"),
        ("<TEMPLATE><A><B><C>1</C></B></A></TEMPLATE>", "cannot nest"),
        ('<!DOCTYPE x [<!ENTITY a "b">]><TEMPLATE/>', "DOCTYPE"),
    ],
)
def test_xml_errors(text: str, words: str) -> None:
    with pytest.raises(TemplateError, match=words):
        template.parse(text)


def test_vector_or_scalar_mismatch() -> None:
    tpl = template.parse("DISK = golden\nNAME = [ A = 1 ]\n")
    with pytest.raises(TemplateError, match="DISK must be a vector"):
        tpl.vectors("DISK")
    with pytest.raises(TemplateError, match="NAME must be a single value"):
        tpl.get("NAME")


def test_empty_template_and_size_limit() -> None:
    assert template.parse("  # nothing\n").items == []
    with pytest.raises(TemplateError, match="longer than"):
        template.parse("A = x\n" * 60000)
