"""Log lines stay whole whatever the values: every line the proxy writes
parses, as JSON (log_format = json) or as key=value text, and is at most
4,096 bytes with its newline. A value too long for the line is cut, inside
its quotes, with the marker "...(+N bytes)" (N: the bytes of the value left
out), never inside an escape sequence or a UTF-8 character; the fields before
and after it are all kept.

The case that broke it: RETR of a path of 1,000 x "é" (2,000 bytes, written
\\xc3\\xa9 in text and \\u00c3\\u00a9 in JSON) gave a transfer line cut at
about 4,094 bytes in the middle of an escape, without its direction, bytes,
reply and result, and not valid JSON. The proxy logs at debug here, so the
command lines that carry the long argument are checked too, as are other
long values a client can send (HOST, USER, an over-long command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import re

import pytest

import harness as h
from harness import KiB

SITE = "ftp.logs.test"
USER = f"{SITE}|anonymous"
NAME = "é" * 125                         # 250 bytes: a file name may have 255
LONG_PATH = "/" + "/".join([NAME] * 8)   # 1,000 x "é": 2,000 bytes and 8 slashes
LONG_HOST = "é" * 1500 + ".test"       # refused, but logged at debug as sent
LONG_USER = "é" * 600 + "|anonymous"
DATA = os.urandom(64 * KiB)
LINE_MAX = 4096                          # bytes, the newline included
MARK = re.compile(r"\.\.\.\(\+(\d+) bytes\)$")


@pytest.fixture(scope="module")
def site(workdir):
    with h.Site(workdir, "logs", [SITE], files={LONG_PATH[1:]: DATA}) as s:
        yield s


def check_cut(value: str, full: str) -> None:
    """value is full, or a prefix of it (at a character boundary) followed by
    the marker that counts the bytes left out."""
    if value == full:
        return
    m = MARK.search(value)
    assert m, f"a changed value without the marker: ...{value[-80:]!r}"
    kept = value[:m.start()]
    assert full.startswith(kept), f"the kept part is not the value's start: {kept[:80]!r}"
    assert "\udcc3" not in kept, "cut inside a UTF-8 character"
    assert int(m.group(1)) == len(full.encode()) - len(kept.encode()), (m.group(0), len(kept))
    assert len(kept) > 100, f"only {len(kept)} characters of the value kept"


def parse_every_line(p: h.Proxy, fmt: str) -> list[dict]:
    """Every line of the proxy's log, parsed strictly; none over LINE_MAX."""
    text = p.log_text()
    assert text.endswith("\n"), f"the log ends mid-line: ...{text[-200:]!r}"
    evs = []
    for n, line in enumerate(text.split("\n")[:-1], 1):
        size = len(line.encode(errors="surrogateescape")) + 1
        assert size <= LINE_MAX, f"line {n}: {size} bytes"
        if fmt == "json":
            try:
                json.loads(line)
            except ValueError as e:
                raise AssertionError(f"line {n} is not JSON ({e}): ...{line[-300:]!r}")
        try:
            evs.append(h.parse_log_line(line))
        except ValueError:
            raise AssertionError(f"line {n} does not parse: ...{line[-300:]!r}")
    return evs


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_long_path_transfer_line_whole(make_proxy, certs, site, fmt):
    p = make_proxy(proxy={"log_format": fmt, "log_level": "debug"},
                   backends={"logs": site.section()})
    f = site.files[LONG_PATH[1:]]
    c = h.login(p, certs, USER)
    try:
        sha, n, resp = h.retr(c, LONG_PATH)
        assert resp.startswith("226"), resp
        assert (n, sha) == (f.size, f.sha)
        # Other long values a client controls, each on a line of its own.
        assert c.cmd("SIZE " + LONG_PATH).code == 213
        assert c.cmd("X" * 5000).code == 500
        assert c.cmd("NOOP").code == 200
        c.quit()
    finally:
        c.close_quietly()
    with contextlib.closing(h.connect(p, certs)) as c:
        assert c.cmd(f"HOST {LONG_HOST}").code // 100 == 5
        assert c.start_tls().code == 234
        assert c.user_pass(LONG_USER).code == 530
    close = '"ev":"close"' if fmt == "json" else " ev=close "
    h.wait_until(lambda: p.log_text().count(close) >= 2, 5, what="both sessions closed")

    evs = parse_every_line(p, fmt)
    xfers = [e for e in evs if e["ev"] == "transfer"]
    assert len(xfers) == 1, xfers
    t = xfers[0]
    want = {"level": "info", "site": SITE, "backend": "logs", "user": "anonymous",
            "command": "RETR", "direction": "download", "bytes": str(f.size),
            "reply": "226", "result": "ok"}
    assert {k: t.get(k) for k in want} == want, t
    assert str(t.get("sid", "")).isdigit() and t.get("client", "").startswith("127.0.0.1:"), t
    assert t.get("time") and int(t["duration_ms"]) >= 0, t
    assert t["path"] != LONG_PATH, "the 1,000 x é path fits a line? then this test proves nothing"
    check_cut(t["path"], LONG_PATH)
    # The command lines with the long path, and the other long values.
    args = [e["arg"] for e in evs if e["ev"] == "command" and e.get("verb") in ("RETR", "SIZE")]
    assert len(args) == 2, args
    for a in args:
        check_cut(a, LONG_PATH)
    for verb, full in (("HOST", LONG_HOST), ("USER", LONG_USER)):
        args = [e["arg"] for e in evs if e["ev"] == "command" and e.get("verb") == verb
                and e["sid"] != t["sid"]]
        assert len(args) == 1, (verb, args)
        check_cut(args[0], full)
    assert [e["ev"] for e in evs if e.get("sid") == t["sid"]][-1] == "close"
