"""OpenNebula templates: the ``KEY = "value"`` syntax and the ``<TEMPLATE>`` XML form.

Syntax (OpenNebula's template language, the subset VMs use)::

    # a comment, to the end of the line
    NAME   = "worker-1"
    CPU    = 0.5                       # unquoted values end at blanks, ',' ']' or '#'
    MEMORY = 1024
    DISK   = [ IMAGE = "golden", TARGET = "vda" ]
    DISK   = [
      IMAGE = "scratch" ]              # vectors may span lines; keys repeat freely
    CONTEXT = [ NOTE = "a \\"quoted\\" and
    multi-line value" ]

Keys are case-insensitive (stored upper-case) and made of letters, digits, ``_`` and ``-``
(``-`` not first). Quoted values may span lines and know two escapes, ``\\"`` and ``\\\\``.
A template is an ordered list of ``(KEY, value)`` where ``value`` is a string or, for a vector,
an ordered ``dict`` of upper-case keys to strings. Errors raise :class:`TemplateError`
naming the line.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field

from lxcloud_py.model import InvalidInput

Value = str | dict[str, str]

_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_MAX_TEMPLATE = 256 * 1024
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class TemplateError(InvalidInput):
    """A template that does not parse; the message names the line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"template line {line}: {message}" if line else f"template: {message}")


@dataclass
class Template:
    """An ordered multi-map of attributes."""

    items: list[tuple[str, Value]] = field(default_factory=list)

    def add(self, key: str, value: Value) -> None:
        self.items.append((key.upper(), value))

    def get_all(self, key: str) -> list[Value]:
        key = key.upper()
        return [v for k, v in self.items if k == key]

    def get(self, key: str, default: str | None = None) -> str | None:
        """The single (first) plain value of ``key``; TemplateError if it is a vector."""
        for value in self.get_all(key):
            if isinstance(value, dict):
                raise TemplateError(f"{key.upper()} must be a single value, not a vector")
            return value
        return default

    def vectors(self, key: str) -> list[dict[str, str]]:
        """Every vector value of ``key``; TemplateError if one is a plain value."""
        out = []
        for value in self.get_all(key):
            if not isinstance(value, dict):
                raise TemplateError(f"{key.upper()} must be a vector: {key.upper()} = [ ... ]")
            out.append(value)
        return out

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for k, _ in self.items:
            seen.setdefault(k, None)
        return list(seen)

    def __iter__(self) -> Iterator[tuple[str, Value]]:
        return iter(self.items)

    def to_text(self) -> str:
        """Render in OpenNebula syntax (parses back to an equal template)."""
        lines = []
        for key, value in self.items:
            if isinstance(value, dict):
                inner = ",\n  ".join(f"{k} = {quote(v)}" for k, v in value.items())
                lines.append(f"{key} = [\n  {inner} ]")
            else:
                lines.append(f"{key} = {quote(value)}")
        return "\n".join(lines) + ("\n" if lines else "")

    def to_xml(self, root: ET.Element | None = None, tag: str = "TEMPLATE") -> ET.Element:
        """``<TEMPLATE><KEY>value</KEY><VEC><K>v</K></VEC></TEMPLATE>`` (OpenNebula's form)."""
        elem = root if root is not None else ET.Element(tag)
        for key, value in self.items:
            child = ET.SubElement(elem, key)
            if isinstance(value, dict):
                for k, v in value.items():
                    ET.SubElement(child, k).text = v
            else:
                child.text = value
        return elem


_PLAIN_RE = re.compile(r"[A-Za-z0-9_.:/+-]+")


def quote(value: str) -> str:
    """A value as the template language writes it: plain tokens bare, the rest quoted."""
    if _PLAIN_RE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def error(self, message: str, line: int | None = None) -> TemplateError:
        return TemplateError(message, line or self.line)

    def skip(self, newlines: bool = True) -> None:
        """Skip blanks and comments (and newlines, unless told not to)."""
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c == "\n":
                if not newlines:
                    return
                self.line += 1
                self.pos += 1
            elif c in " \t\r":
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def key(self, what: str) -> str:
        m = _KEY_RE.match(self.text, self.pos)
        if not m:
            got = self.peek()
            shown = repr(got) if got else "end of template"
            raise self.error(f"expected {what}, found {shown}")
        self.pos = m.end()
        return m.group(0).upper()

    def expect(self, char: str, context: str) -> None:
        if self.peek() != char:
            got = self.peek()
            shown = repr(got) if got else "end of template"
            raise self.error(f"expected {char!r} {context}, found {shown}")
        self.pos += 1

    def scalar(self, in_vector: bool, key: str) -> str:
        if self.peek() == '"':
            return self.quoted(key)
        stop = " \t\r\n#" + (",]" if in_vector else "")
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stop:
            c = self.text[self.pos]
            if c in "[\"'=" or (c == "]" and not in_vector):
                raise self.error(f"unexpected {c!r} in the value of {key} (quote the value)")
            self.pos += 1
        if self.pos == start:
            raise self.error(f"missing value for {key}")
        return self.text[start : self.pos]

    def quoted(self, key: str) -> str:
        start_line = self.line
        self.pos += 1  # opening quote
        out: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise self.error(f"unterminated quoted value of {key}", start_line)
            c = text[self.pos]
            if c == "\\" and self.pos + 1 < len(text) and text[self.pos + 1] in '"\\':
                out.append(text[self.pos + 1])
                self.pos += 2
                continue
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\n":
                self.line += 1
            out.append(c)
            self.pos += 1


def parse(text: str) -> Template:
    """Parse a template in OpenNebula syntax or as ``<TEMPLATE>`` XML (detected by ``<``)."""
    if not isinstance(text, str):
        raise TemplateError("the template must be a string")
    if len(text) > _MAX_TEMPLATE:
        raise TemplateError(f"longer than {_MAX_TEMPLATE} characters")
    bad = _CONTROL_RE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise TemplateError(f"control character {bad.group(0)!r} is not allowed", line)
    if text.lstrip().startswith("<"):
        return parse_xml(text)
    return parse_text(text)


def parse_text(text: str) -> Template:
    tpl = Template()
    lx = _Lexer(text)
    while True:
        lx.skip()
        if lx.pos >= len(text):
            return tpl
        key_line = lx.line
        key = lx.key("an attribute name")
        lx.skip(newlines=False)
        lx.expect("=", f"after {key}")
        lx.skip(newlines=False)
        if lx.peek() == "[":
            lx.pos += 1
            tpl.add(key, _vector(lx, key, key_line))
        elif lx.peek() in ("", "\n", "#"):
            raise lx.error(f"missing value for {key}")
        else:
            tpl.add(key, lx.scalar(False, key))
        # Nothing but blanks or a comment may follow on the line.
        lx.skip(newlines=False)
        if lx.peek() not in ("", "\n"):
            raise lx.error(f"unexpected {lx.peek()!r} after the value of {key}")


def _vector(lx: _Lexer, key: str, key_line: int) -> dict[str, str]:
    vec: dict[str, str] = {}
    while True:
        lx.skip()
        if lx.peek() == "":
            raise lx.error(f"unterminated vector {key} (missing ']')", key_line)
        if lx.peek() == "]" and not vec:
            lx.pos += 1
            return vec
        sub = lx.key(f"an attribute name inside {key}")
        lx.skip()
        lx.expect("=", f"after {key}/{sub}")
        lx.skip()
        if lx.peek() in ("", "]", ","):
            raise lx.error(f"missing value for {key}/{sub}")
        if lx.peek() == "[":
            raise lx.error(f"vectors cannot nest ({key}/{sub})")
        value = lx.scalar(True, f"{key}/{sub}")
        if sub in vec:
            raise lx.error(f"{key}/{sub} given twice in one vector")
        vec[sub] = value
        lx.skip()
        if lx.peek() == ",":
            lx.pos += 1
            continue
        if lx.peek() == "]":
            lx.pos += 1
            return vec
        if lx.peek() == "":
            raise lx.error(f"unterminated vector {key} (missing ']')", key_line)
        raise lx.error(f"expected ',' or ']' in vector {key}, found {lx.peek()!r}")


def parse_xml(text: str) -> Template:
    """``<TEMPLATE><NAME>x</NAME><DISK><IMAGE>y</IMAGE></DISK></TEMPLATE>``."""
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise TemplateError("DOCTYPE/ENTITY declarations are not allowed in XML templates")
    try:
        root = ET.fromstring(text)  # noqa: S314 - no DTDs (refused above), size bounded
    except ET.ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else None
        raise TemplateError(f"not well-formed XML: {exc}", line) from None
    if root.tag.upper() != "TEMPLATE":
        raise TemplateError(f"the XML root must be <TEMPLATE>, not <{root.tag}>")
    tpl = Template()
    for child in root:
        key = _xml_key(child.tag)
        if len(child):
            vec: dict[str, str] = {}
            for sub in child:
                if len(sub):
                    raise TemplateError(f"vectors cannot nest ({key}/{sub.tag})")
                name = _xml_key(sub.tag)
                if name in vec:
                    raise TemplateError(f"{key}/{name} given twice in one vector")
                vec[name] = (sub.text or "").strip()
            tpl.add(key, vec)
        else:
            tpl.add(key, (child.text or "").strip())
    return tpl


def _xml_key(tag: str) -> str:
    if not _KEY_RE.fullmatch(tag):
        raise TemplateError(f"bad attribute name <{tag}>")
    return tag.upper()
