"""AWS Signature Version 4, verified as AWS defines it (header and query-string forms).

The canonical request is ``METHOD\\nCANONICAL_URI\\nCANONICAL_QUERY\\nCANONICAL_HEADERS\\n
SIGNED_HEADERS\\nPAYLOAD_HASH``: the path URI-encoded (RFC 3986 unreserved characters kept,
``/`` kept), the query's parameters decoded, re-encoded and sorted by name then value (without
``X-Amz-Signature`` in the query form), each signed header as ``name:value`` with its name lower
case and runs of spaces in its value collapsed, and the hex SHA-256 of the body (or the
``X-Amz-Content-SHA256`` header's value). The string to sign is ``AWS4-HMAC-SHA256\\nDATE\\n
SCOPE\\nSHA256(canonical request)``; the key is derived from the secret, the scope's date,
region and service. Signatures are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from calendar import timegm
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "ec2"
MAX_SKEW = 300.0  # seconds either way
MAX_EXPIRES = 7 * 86400
_DATE_RE = re.compile(r"\A(\d{8})T(\d{6})Z\Z")
_KEY_ID_RE = re.compile(r"\A[A-Z0-9]{16,128}\Z")


class SigError(Exception):
    """A refused signature: ``code`` is EC2's error code, ``status`` the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Signed:
    """What the client signed with: the access key id, its scope and the signature."""

    key_id: str
    date: str  # YYYYMMDD of the scope
    region: str
    service: str
    amz_date: str  # YYYYMMDDTHHMMSSZ
    signed_headers: tuple[str, ...]
    signature: str
    in_query: bool
    expires: int | None


def uri_encode(text: str, safe: str = "") -> str:
    """AWS's UriEncode: every byte but A-Z a-z 0-9 - _ . ~ (and ``safe``) as %XX upper case."""
    return quote(text, safe="-_.~" + safe)


def _pairs(query: str) -> list[tuple[str, str]]:
    out = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        out.append((unquote(name), unquote(value)))
    return out


def canonical_query(query: str, drop_signature: bool) -> str:
    pairs = [
        (uri_encode(k), uri_encode(v))
        for k, v in _pairs(query)
        if not (drop_signature and k == "X-Amz-Signature")
    ]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_uri(path: str) -> str:
    return uri_encode(unquote(path) or "/", safe="/")


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    signed: tuple[str, ...],
    payload_hash: str,
    drop_signature: bool,
) -> str:
    lines = [f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed]
    return "\n".join(
        [
            method,
            canonical_uri(path),
            canonical_query(query, drop_signature),
            "".join(lines),
            ";".join(signed),
            payload_hash,
        ]
    )


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def _split_credential(text: str) -> tuple[str, str, str, str]:
    parts = text.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SigError(
            "IncompleteSignature",
            "Credential must be KEYID/YYYYMMDD/REGION/SERVICE/aws4_request",
        )
    key_id, date, region, service, _ = parts
    if not _KEY_ID_RE.match(key_id):
        raise SigError("AuthFailure", "AWS was not able to validate the provided access "
                       "credentials", 401)
    if not re.fullmatch(r"\d{8}", date):
        raise SigError("IncompleteSignature", f"bad date {date!r} in the credential scope")
    return key_id, date, region, service


def parse(headers: dict[str, str], query_params: dict[str, str]) -> Signed:
    """The signature a request carries (header form, else query form); SigError when it
    carries none or a malformed one."""
    auth = headers.get("authorization")
    if auth is not None:
        algo, _, rest = auth.strip().partition(" ")
        if algo != ALGORITHM:
            raise SigError("IncompleteSignature", f"unsupported algorithm {algo[:40]!r} "
                           f"(only {ALGORITHM})")
        fields: dict[str, str] = {}
        for item in rest.split(","):
            name, sep, value = item.strip().partition("=")
            if sep:
                fields[name] = value
        missing = [f for f in ("Credential", "SignedHeaders", "Signature") if f not in fields]
        if missing:
            raise SigError("IncompleteSignature",
                           f"Authorization header lacks {', '.join(missing)}")
        amz_date = headers.get("x-amz-date")
        if amz_date is None:
            raise SigError("IncompleteSignature", "no X-Amz-Date header")
        cred, signed_h, sig, expires = (fields["Credential"], fields["SignedHeaders"],
                                        fields["Signature"], None)
        in_query = False
    elif "X-Amz-Signature" in query_params or "X-Amz-Algorithm" in query_params:
        need = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders",
                "X-Amz-Signature")
        missing = [n for n in need if n not in query_params]
        if missing:
            raise SigError("IncompleteSignature", f"query string lacks {', '.join(missing)}")
        if query_params["X-Amz-Algorithm"] != ALGORITHM:
            raise SigError("IncompleteSignature", f"unsupported algorithm (only {ALGORITHM})")
        cred, signed_h, sig = (query_params["X-Amz-Credential"],
                               query_params["X-Amz-SignedHeaders"],
                               query_params["X-Amz-Signature"])
        amz_date = query_params["X-Amz-Date"]
        raw = query_params.get("X-Amz-Expires", "900")
        if not raw.isdigit() or not 0 < int(raw) <= MAX_EXPIRES:
            raise SigError("AuthFailure", f"X-Amz-Expires must be 1..{MAX_EXPIRES}", 401)
        expires = int(raw)
        in_query = True
    else:
        raise SigError("MissingAuthenticationToken",
                       "Request is missing Authentication Token", 401)
    key_id, date, region, service = _split_credential(cred)
    names = tuple(signed_h.split(";"))
    if not signed_h or list(names) != sorted(set(names)) or "host" not in names:
        raise SigError("IncompleteSignature",
                       "SignedHeaders must be sorted, lower case, without repeats, with host")
    if not re.fullmatch(r"[0-9a-f]{64}", sig):
        raise SigError("IncompleteSignature", "Signature must be 64 lower-case hex digits")
    if not _DATE_RE.match(amz_date):
        raise SigError("IncompleteSignature", "X-Amz-Date must be YYYYMMDDTHHMMSSZ")
    if amz_date[:8] != date:
        raise SigError("SignatureDoesNotMatch",
                       "the credential scope's date is not the date of X-Amz-Date", 403)
    return Signed(key_id, date, region, service, amz_date, names, sig, in_query, expires)


def _epoch(amz_date: str) -> float:
    return float(timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))


def verify(
    signed: Signed,
    secret: str,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    region: str,
    clock: Callable[[], float] = time.time,
) -> None:
    """Raise SigError unless ``signed`` is a valid signature of the request, made with
    ``secret`` for ``region`` and EC2, at a time within the skew window (or, query form,
    not expired)."""
    if signed.service != SERVICE:
        raise SigError("SignatureDoesNotMatch",
                       f"credential scope service {signed.service!r}, expected {SERVICE!r}", 403)
    if signed.region != region:
        raise SigError("SignatureDoesNotMatch",
                       f"credential scope region {signed.region!r}, expected {region!r}", 403)
    try:
        t = _epoch(signed.amz_date)
    except ValueError:
        raise SigError("IncompleteSignature", "X-Amz-Date is not a valid time") from None
    now = clock()
    if t - now > MAX_SKEW:
        raise SigError("RequestExpired", "Request is in the future (X-Amz-Date more than "
                       f"{MAX_SKEW:g} s ahead of the server's clock)")
    if signed.in_query:
        assert signed.expires is not None
        if now > t + signed.expires:
            raise SigError("RequestExpired", "Request has expired (X-Amz-Expires)")
    elif now - t > MAX_SKEW:
        raise SigError("RequestExpired", f"Request has expired (X-Amz-Date more than "
                       f"{MAX_SKEW:g} s behind the server's clock)")
    payload = headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    creq = canonical_request(method, path, query, headers, signed.signed_headers, payload,
                             drop_signature=signed.in_query)
    scope = f"{signed.date}/{signed.region}/{signed.service}/aws4_request"
    to_sign = "\n".join(
        [ALGORITHM, signed.amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()]
    )
    key = signing_key(secret, signed.date, signed.region, signed.service)
    want = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, signed.signature):
        raise SigError("SignatureDoesNotMatch", "The request signature we calculated does not "
                       "match the signature you provided.", 403)
    # the body carries the action's parameters: it is signed unless empty
    if payload != hashlib.sha256(body).hexdigest() and (payload != "UNSIGNED-PAYLOAD" or body):
        raise SigError("SignatureDoesNotMatch",
                       "X-Amz-Content-SHA256 is not the SHA-256 of the body", 403)
