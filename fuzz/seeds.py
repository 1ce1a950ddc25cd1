#!/usr/bin/env python3
"""Writes the committed seed corpus: fuzz/corpus/<target>/seed-NN.

Realistic inputs: browser request heads, the attack spellings of
tests/it/attack.rs, portal answers, cookies, forms, redirect targets,
public paths and the example configuration. Run from anywhere:
`python3 fuzz/seeds.py`. The grown corpus (other file names) is not
committed (fuzz/.gitignore)."""
import os, pathlib

root = pathlib.Path(__file__).resolve().parent
repo = root.parent

def write(target, items):
    d = root / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for f in d.glob("seed-*"):
        f.unlink()
    for i, b in enumerate(items):
        (d / f"seed-{i:02}").write_bytes(b if isinstance(b, bytes) else b.encode())

B = b"Host: portal.example\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: de-AT,de;q=0.9,en;q=0.5\r\n"
SMUG = b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNK = b"3\r\nabc\r\n0\r\n\r\n"
heads = [
    b"GET / HTTP/1.1\r\n" + B + b"\r\n",
    b"GET /mieter/konto?tab=2&x=%C3%A4 HTTP/1.1\r\n" + B + b"Cookie: riegel_session=AQI.abc; theme=dark; riegel_session_csrf=x\r\nSec-Fetch-Site: same-origin\r\nOrigin: https://portal.example\r\n\r\n",
    b"HEAD /assets/app.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /assets/..;/secret HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /assets/..;jsessionid=1/secret HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /assets/..# HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /assets/%252e%252e/secret HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /assets/%c0%ae%c0%ae/secret HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /assets/%u002e%u002e/secret HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /assets/..%09/secret HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://riegel.test/secret HTTP/1.1\r\nHost: riegel.test\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: riegel.test\r\n\r\n",
    b"CONNECT riegel.test:80 HTTP/1.1\r\nHost: riegel.test\r\n\r\n",
    b"POST /_riegel/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 27\r\n\r\nusername=anna&password=geh",
    b"POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNK,
    b"POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n" + CHUNK,
    b"POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n" + CHUNK,
    b"POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\nContent-Length: 0\r\n\r\n" + CHUNK,
    b"POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 34\r\n\r\n" + SMUG,
    b"POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 34\r\n\r\n" + SMUG,
    b"GET /pub/a HTTP/1.1\r\nHost: x\r\nContent_Length: 34\r\n\r\n" + SMUG,
    b"GET /pub/a HTTP/1.1\r\nHost: x\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n" + CHUNK,
    b"GET /pub/a HTTP/1.1\nHost: x\nX-A: b\n\n" + SMUG,
    b"GET /pub/a HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n" + SMUG,
    b"GET /pub/a HTTP/1.1\r\nHost: x\r\nX-A: b\0c\r\n\r\n",
    b"GET /pub/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /pub/a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /pub/a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x-api-key\r\nx_api_key: 1\r\nProxy-Authorization: Basic eA==\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nCookie: name=J\xc3\xbcrgen; riegel_session=a\r\ncookie: riegel_session_csrf=b; x=\xff\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: \xff, 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 2001:db8::1, 10.0.0.2\r\nX-Forwarded-For: [2001:db8::2]:443\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 1.1.1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nRemote-User: admin\r\nremote_email: a@b\r\nX-Forwarded-Server: y\r\nTE: trailers\r\nKeep-Alive: timeout=5\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a@evil\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, host\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
]
# The first byte of head and differential inputs is a flag (bit 0: the
# trusted proxy): every head both ways.
flagged = [bytes([f]) + h for h in heads for f in (0, 1)]
write("head", flagged)
write("differential", flagged)

answers = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\nabc\n0\n\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"a\"\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
    b"HTTP/1.1 302 Found\r\nLocation: /login\r\nSet-Cookie: JSESSIONID=abc; Path=/; HttpOnly\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 500 Internal Server Error\r\nTrailer: X-A\r\nContent-Length: 0\r\n\r\n",
    b"NOT HTTP\r\n\r\n",
]
write("answer", [bytes([f]) + a for a in answers for f in (0, 1, 14, 61)])

cookies = [
    b"riegel_session=AQIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbg",
    b"theme=dark; riegel_session=abc; lang=de",
    b"riegel_session=x; riegel_session_csrf=y",
    b" riegel_session = \"quoted\" ; a=1",
    b"riegel_session_csrf=c; riegel_sessionX=1; Xriegel_session=2",
    b"name=J\xc3\xbcrgen; riegel_session=\xff",
    b"JSESSIONID=ABCDEF0123456789; _ga=GA1.2.3.4; riegel_session=a; riegel_session=b",
    b";;;=;riegel_session;=riegel_session",
    b"a=b=c; riegel_session=a=b",
    b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x20\x21",
    b"0123456789abcdef0123456789abcdef0123456789abcdef",
    b"riegel_session=AQI.abc\tx",
]
write("cookie", [bytes([p]) + c for c in cookies for p in (0, 77)])

forms = [
    "username=anna%40example.at&password=a+b%26c&x=1&x=2",
    "username=anna&password=geheim&csrf=AbC-_d",
    "code=123456&csrf=t&rd=%2Fmieter%2Fkonto%3Fx%3D1",
    "recovery=abcd-efgh-ijkl&csrf=t",
    "email=anna%2Breset%40example.at",
    "new_password=%E2%82%AC%F0%9F%98%80&new_password2=%E2%82%AC",
    "password=%ZZ%&&==&=x&y=",
    "password=%C0%AE%FF%FE",
    "a" * 300 + "=" + "b" * 300,
    "username=anna;password=x",
    "&&&",
    "password=+%2B+",
]
write("form", forms)

redirects = [
    "/", "/mieter/konto?tab=2", "/a/b?next=http://evil.example", "//evil.example", "/\\evil.example",
    "/%2Fevil.example", "/%2F%2Fevil.example", "/%5Cevil.example", "/%252F%252Fevil.example",
    "/%25252F%25252Fevil.example", "/%2525252F%2525252Fevil.example", "/%09/evil.example",
    "/%0d%0aSet-Cookie:x=1", "/%C2%85evil", "/%E2%80%A8x", "https://evil.example/", "/a b",
    "/caf%C3%A9", "/%00", "/%7F", "/%", "/%G0", "/..//evil.example", "/a//b",
]
write("redirect", redirects)

paths = [
    "/assets/app.css", "/assets/logo@2x.png", "/assets/a+b.js", "/assets/%61pp.css", "/favicon.ico", "/",
    "/assets/", "/assets/..;/secret", "/assets/..;jsessionid=1/secret", "/assets/..#", "/assets/%252e%252e/secret",
    "/assets/%c0%ae%c0%ae/secret", "/assets/%u002e%u002e/secret", "/assets/..%09/secret", "/assets/..%20/secret",
    "/assets/%2e%2e/secret", "/assets/%2E./secret", "/assets/.../x", "/assets//x", "/assets\\..\\secret",
    "/assets/%2fsecret", "/assets/a%7e", "/assets/%", "/assets/%zz", "//assets/x", "assets/x", "/assets/x?y",
    "/assets/\u00e4.png",
]
write("public_path", paths)

example = (repo / "config" / "riegel.example.yaml").read_text()
configs = [
    example,
    "",
    "upstream:\n  host: 127.0.0.1\n  port: 8080\n",
    "server:\n  listen: 127.0.0.1:9000\n  trusted_proxies: [10.0.0.0/8, '::1/128', bogus]\nupstream:\n  host: 127.0.0.1\n  port: 99999\n",
    "unknown_key: 1\nupstream: [1, 2]\n",
    "session:\n  lifetime: 12h\n  idle_timeout: -1s\n",
    "a: &x [*x]\n",
    "a: &a [1,2]\nb: &b [*a,*a,*a]\nc: &c [*b,*b,*b]\n",
    "[" * 200,
    "regulation:\n  max_failures: 0\n  find_time: 10m\n  ban_time: forever\n",
    "public_paths: ['/assets/*', '*', '/x*y']\n",
    "mail:\n  from: 'not an address'\n  smtp: {host: '', port: 0, tls: maybe}\n",
    "!!binary aGVsbG8=\n",
    "? [a, b]\n: c\n",
    "store:\n  postgres:\n    url: postgres://u:p@127.0.0.1/db\n",
]
write("config", configs)
