#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/* from the project's own test fixtures and samples.

Run from anywhere: `python3 fuzz/make_seeds.py`. The output is committed; rerun it when a
target's input format (documented in agent/src/fuzz.rs) changes.
"""
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent
FIXTURES = ROOT.parent / "agent/src/protocol/http1/fixtures"
H2_FIXTURES = ROOT.parent / "agent/src/protocol/http2/fixtures"
REDIS_FIXTURES = ROOT.parent / "agent/src/protocol/redis/fixtures"
MEMCACHED_FIXTURES = ROOT.parent / "agent/src/protocol/memcached/fixtures"
PG_FIXTURES = ROOT.parent / "agent/src/protocol/postgres/fixtures"
MY_FIXTURES = ROOT.parent / "agent/src/protocol/mysql/fixtures"
SEEDS = ROOT / "seeds"


def write(target, name, data):
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def fixture_reads(name, folder=FIXTURES):
    """(egress, bytes) per captured syscall of a fixture (payload strings are latin-1)."""
    reads = []
    for line in (folder / name).read_text().splitlines():
        record = json.loads(line)
        reads.append((record["direction"] == "egress", record["payload"].encode("latin-1")))
    return reads


def fixture_calls(name, folder):
    """(egress, captured bytes, bytes moved) per captured syscall of a datastore fixture."""
    calls = []
    for line in (folder / name).read_text().splitlines():
        record = json.loads(line)
        calls.append((record["direction"] == "egress", record["payload"].encode("latin-1"),
                      record["ret"]))
    return calls


def datastore_script(calls, server, keep=255):
    """redis/memcached_connection script: the connection script, each syscall's bytes beyond
    its capture (or beyond `keep` bytes) as an uncaptured count (x64, rounded so that a data
    block skipped by length still ends inside it)."""
    out = bytearray()
    for egress, data, moved in calls:
        response = egress == server
        piece = data[:keep]
        control = 1 if response else 0
        extra = b""
        if moved > len(piece):
            units = min(255, (moved - len(piece) + 63) // 64)
            extra = bytes([units])
            control |= 2
        out += bytes([control, len(piece)]) + piece + extra
    return bytes(out)


def connection_script(reads, server, truncate_over=None):
    """http1_connection script: control (bit0 response side, bit1 truncated), length, bytes."""
    out = bytearray()
    for egress, data in reads:
        response = egress == server
        for start in range(0, len(data), 255):
            piece = data[start:start + 255]
            control = 1 if response else 0
            extra = b""
            if truncate_over is not None and len(piece) > truncate_over:
                extra = bytes([(len(piece) - truncate_over + 63) // 64])
                piece = piece[:truncate_over]
                control |= 2
            out += bytes([control, len(piece)]) + piece + extra
    return bytes(out)


KEEPALIVE = [
    (True, b"GET /users/42?token=abc HTTP/1.1\r\nHost: api\r\ntraceparent: "
           b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"),
    (False, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    (True, b"POST /upload HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4\r\nwiki\r\n0\r\n\r\n"),
    (False, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    (True, b"HEAD /x HTTP/1.1\r\n\r\n"),
    (False, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
    (True, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
    (False, b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x05hello"),
]


def main():
    server = fixture_reads("python_server_pipelined_chunked.jsonl")
    client = fixture_reads("python_client_pipelined_chunked.jsonl")
    # The fixtures were captured on the server (egress = responses) and the client.
    write("http1_connection", "server_capture", connection_script(server, True))
    write("http1_connection", "client_capture", connection_script(client, False))
    write("http1_connection", "server_capture_160", connection_script(server, True, 160))
    write("http1_connection", "keepalive_upgrade", connection_script(KEEPALIVE, False))

    for name, reads, server_side in [("server", server, True), ("client", client, False)]:
        requests = b"".join(d for e, d in reads if e != server_side)
        responses = b"".join(d for e, d in reads if e == server_side)
        write("http1_resplit", name, resplit_input(7, requests, responses))
    requests = b"".join(d for e, d in KEEPALIVE if e)
    responses = b"".join(d for e, d in KEEPALIVE if not e)
    write("http1_resplit", "keepalive_upgrade", resplit_input(3, requests, responses))

    for i, (_, data) in enumerate(KEEPALIVE):
        write("http1_head", f"keepalive_{i}", data)

    header = struct.pack("<IIIiQQ", 3, 4242, 4243, 5, 77, 1_000_000)
    payload = b"GET / HTTP/1.1\r\n\r\n"
    data_event = header + struct.pack("<qqIIII", 999_000, len(payload), 1, 0, 1, len(payload))
    write("ring_record", "data", data_event + payload)
    open_header = struct.pack("<IIIiQQ", 1, 4242, 4243, 5, 77, 1_000_000)
    tuple_ = struct.pack("<HHHH16s16s", 2, 0, 8080, 40000, b"\x7f\0\0\x01" + bytes(12),
                         b"\x7f\0\0\x01" + bytes(12))
    write("ring_record", "open", open_header + tuple_ + struct.pack("<IIQQ16s", 2, 12, 0, 0,
                                                                    b"python3".ljust(16, b"\0")))

    write("btf", "outer_union", btf_sample())

    write("trace_context", "w3c",
          b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nrojo=00f067aa0ba902b7\n")
    write("trace_context", "b3_single",
          b"\n\n80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90\n")
    write("trace_context", "b3_multi",
          b"\n\n\n80f198ee56343ba864fe8b2a57d3eff7\ne457b5a2e4d86bd1\n1")

    write("redaction", "curl",
          b"curl\0-H\0Authorization: Bearer abc\0--password\0hunter22\0http://a/b/42?token=1")
    write("redaction", "route", b"/users/12345/orders/9f3c2a7e-1111-4c1e-9d2f-0123456789ab?x=1")

    write("pipeline", "exchange", pipeline_script())

    # DNS: glibc's A and AAAA (one sendmmsg), answered out of order, over UDP and over TCP.
    a = (b"\xd4\x7b\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
         b"\x03api\x05model\x08internal\x00\x00\x01\x00\x01")
    aaaa = b"\xff\x7e" + a[2:-4] + b"\x00\x1c\x00\x01"
    answer_a = (a[:2] + b"\x81\x80\x00\x01\x00\x01" + a[8:]
                + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04\x0a\x01\x02\x03")
    nxdomain_aaaa = aaaa[:2] + b"\x81\x83" + aaaa[4:]
    exchange = [(True, a), (True, aaaa), (False, nxdomain_aaaa), (False, answer_a)]
    write("dns_connection", "udp", b"\0" + connection_script(exchange, False))
    framed = [(e, struct.pack(">H", len(m)) + m) for e, m in exchange]
    write("dns_connection", "tcp", b"\1" + connection_script(framed, False))

    # HTTP/2: the grpcio captures at both ends, from the preface and attached midway.
    for name, server_side in [("client", False), ("server", True)]:
        calls = fixture_reads(f"grpcio_{name}_calls.jsonl", H2_FIXTURES)
        midstream = fixture_reads(f"grpcio_{name}_midstream.jsonl", H2_FIXTURES)
        write("http2_connection", f"{name}_calls", b"\0" + connection_script(calls, server_side))
        write("http2_connection", f"{name}_calls_40",
              b"\0" + connection_script(calls, server_side, 40))
        write("http2_connection", f"{name}_midstream",
              b"\1" + connection_script(midstream, server_side))
    # Datastores: redis-py and pymemcache captures, at the client and at the server.
    for name, server_side in [("redis_py_resp2_client", False), ("redis_py_resp2_server", True),
                              ("redis_py_pubsub_resp2_client", False),
                              ("redis_py_resp3_client", False)]:
        calls = fixture_calls(f"{name}.jsonl", REDIS_FIXTURES)
        write("redis_connection", name, datastore_script(calls, server_side))
    for name, server_side in [("pymemcache_client_1", False), ("pymemcache_server_2", True),
                              ("raw_meta_client", False)]:
        calls = fixture_calls(f"{name}.jsonl", MEMCACHED_FIXTURES)
        write("memcached_connection", name, datastore_script(calls, server_side))
    # Datastores: the http1_connection script format, from each end's capture, after a byte
    # saying how the connection was seen (0: from its start; odd: picked up mid-stream, here
    # from the capture's last third).
    for target, folder, names in [
        ("postgres_connection", PG_FIXTURES, ["psycopg"]),
        ("mysql_connection", MY_FIXTURES, ["pymysql", "connector"]),
    ]:
        for name in names:
            for end, server_side in [("client", False), ("server", True)]:
                reads = fixture_reads(f"{name}_{end}.jsonl", folder)
                write(target, f"{name}_{end}", b"\0" + connection_script(reads, server_side))
                write(target, f"{name}_{end}_160",
                      b"\0" + connection_script(reads, server_side, 160))
                # From the first request in the last third (a server's read, a client's
                # write), the mode byte saying what it begins with.
                for i in range(2 * len(reads) // 3, len(reads)):
                    egress, data = reads[i]
                    if egress != server_side and data[:1] in (b"Q", b"P", b"B", b"\0"):
                        break
                else:
                    continue
                mode = {b"Q": b"\1", b"P": b"\2", b"B": b"\3"}.get(data[:1], b"\1")
                write(target, f"{name}_{end}_midstream",
                      mode + connection_script(reads[i:], server_side))
    for name, text in [
        ("select", b"SELECT * FROM t WHERE a = 'zz9secret' AND b = 42 -- c\n"),
        ("dollar", b"DO $f$ BEGIN PERFORM 'x'; END $f$; SELECT E'a\\'b', 0x1F /* 'c' */"),
        ("mysql", b"INSERT INTO `t` VALUES (\"s\", 'a\\'b', X'ff') # tail"),
    ]:
        write("sql_sanitise", name, text)
    write("hpack", "rfc7541_c4", hpack_input(1, RFC7541_C4))
    write("hpack", "rfc7541_c4_whole", hpack_input(0, RFC7541_C4))
    for name, data in store_frames():
        write("store_frame", name, data)


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def lp(data):
    return varint(len(data)) + data


def store_frames():
    """`store_frame` inputs: (format selector, span count, a frame's raw bytes) in each of the
    store's three frame formats (agent/src/store/frame.rs, record.rs)."""
    resource = b'{"service.name":"svc","process.pid":42}'
    keys = [b"http.request.method", b"http.response.status_code"]

    def head(span, parent, flags, name, message=b""):
        return (bytes([span]) * 8 + bytes([parent]) * 8 + bytes([flags])
                + struct.pack("<QQ", 1_000, 2_000) + lp(name)
                + (lp(message) if flags & 4 else b"")
                + varint(1) + bytes([7]) * 16 + bytes([8]) * 8 + lp(b"ambiguous"))

    values = b"\0" + lp(b"GET") + b"\1" + struct.pack("<q", 200)

    def record(trace, body):
        return bytes([trace]) * 16 + struct.pack("<I", len(body)) + body

    # Format 3: records naming entries of the frame's tables, then the tables and two lengths.
    records = record(1, head(1, 0, 0, b"GET /a") + varint(0) + values + varint(0))
    records += record(2, head(2, 1, 5, b"GET /b", b"boom") + varint(0) + values + varint(0))
    resources = lp(resource)
    key_lists = varint(len(keys)) + b"".join(lp(k) for k in keys)
    three = records + resources + key_lists + struct.pack("<II", len(records), len(resources))
    # Format 2: each record with its keys and its resource's JSON.
    inline = varint(len(keys)) + lp(keys[0]) + b"\0" + lp(b"GET") + lp(keys[1]) + b"\1" \
        + struct.pack("<q", 200) + lp(resource)
    two = record(1, head(1, 0, 2, b"GET /a") + inline)
    # Format 1: each record the span's JSON.
    one = record(1, b'{"trace_id":"01","name":"GET /a"}')
    return [("format3", b"\2\2" + three), ("format2", b"\1\1" + two),
            ("format1", b"\0\1" + one)]


# RFC 7541 Appendix C.4: three requests with Huffman coding, sharing a dynamic table.
RFC7541_C4 = [
    bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"),
    bytes.fromhex("828684be5886a8eb10649cbf"),
    bytes.fromhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"),
]


def hpack_input(skip, blocks):
    """hpack input: blocks the late decoder skips, then each block after a length byte."""
    return bytes([skip]) + b"".join(bytes([len(b)]) + b for b in blocks)


def resplit_input(seed, requests, responses):
    """http1_resplit input: cut-size seed, request length (u16 LE), requests, responses."""
    return bytes([seed]) + struct.pack("<H", len(requests)) + requests + responses


def btf_sample():
    """`struct outer { int a; union { short b; long c; }; char d[3]; }` (as in btf.rs's tests)."""
    strings = b"\0outer\0a\0b\0c\0d\0int\0short\0long\0char\0"
    s = lambda name: strings.index(b"\0" + name.encode() + b"\0") + 1
    INT, ARRAY, STRUCT, UNION = 1, 3, 4, 5
    words = [
        s("int"), INT << 24, 4, 32,
        s("short"), INT << 24, 2, 16,
        s("long"), INT << 24, 8, 64,
        s("char"), INT << 24, 1, 8,
        0, (UNION << 24) | 2, 8, s("b"), 2, 0, s("c"), 3, 0,
        0, ARRAY << 24, 0, 4, 1, 3,
        s("outer"), (STRUCT << 24) | 3, 24, s("a"), 1, 0, 0, 5, 64, s("d"), 6, 128,
    ]
    types = struct.pack(f"<{len(words)}I", *words)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def pipeline_script():
    """Client connection 1 and server connection 2 of one request, as the ring delivers them."""
    request = b"GET /score/7 HTTP/1.1\r\nHost: model\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    conn = lambda n: (n - 1) << 2
    out = bytearray()
    out += bytes([0 | conn(1), 0])                      # open client
    out += bytes([0 | conn(2) | 0x40, 1])               # open server
    out += bytes([1 | conn(1), 0, len(request)]) + request             # client writes
    out += bytes([1 | conn(2) | 0x20, 1, len(request)]) + request      # server reads
    out += bytes([1 | conn(2), 1, len(response)]) + response           # server writes
    out += bytes([1 | conn(1) | 0x20, 0, len(response)]) + response    # client reads
    out += bytes([2 | conn(1), 0])                      # close client
    out += bytes([3, 0])                                # flush
    return bytes(out)


if __name__ == "__main__":
    main()
