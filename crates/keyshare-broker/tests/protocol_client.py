#!/usr/bin/env python3
"""A second implementation of the broker protocol, written from docs/protocol.md alone.

It is a test fixture: `tests/second_implementation.rs` runs it against a real broker to show
that the document is enough to write a client. The top half is the client; the bottom half
is the scenarios the Rust test runs:

    python3 protocol_client.py SOCKET SCENARIO

Inputs (values included) arrive as one line of JSON on stdin, never in argv; a scenario that
waits for the test to act reads a further line. Values are secrets: the scenarios compare
them here and print a verdict (`matches`), never the value itself.
"""

import base64
import binascii
import json
import select
import socket
import struct
import sys
import time

PROTOCOL_VERSION = 1
MAX_FRAME_LEN = 1024 * 1024
HEADER = struct.Struct(">I")


class ConnectionClosed(Exception):
    """The broker ended the connection (cleanly or with a reset)."""


class FrameError(Exception):
    """The broker sent something that is not a frame of this protocol."""


class RemoteError(Exception):
    """The broker answered a request (or the connection, when `id` is None) with an error."""

    def __init__(self, frame):
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.id = frame.get("id")
        self.code = frame.get("code")
        self.message = frame.get("message", "")
        self.frame = frame


def encode_value(value):
    """Values are bytes on the wire as standard base64 with padding."""
    return base64.b64encode(value).decode("ascii")


def decode_value(text):
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as err:
        raise FrameError(f"a value that is not standard base64: {err}") from err


def frame(body):
    """The frame carrying `body` (bytes): a big-endian u32 length, then the body."""
    return HEADER.pack(len(body)) + body


def encode_message(message):
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_FRAME_LEN:
        raise ValueError(f"a {len(body)}-byte frame is over the {MAX_FRAME_LEN}-byte limit")
    return frame(body)


class Connection:
    """One connection to the broker: framing, request ids, replies matched by id, events queued.

    Replies to pipelined requests may arrive in any order, and events may arrive between
    replies; `wait` keeps whatever it reads that is not the reply it waits for.
    """

    def __init__(self, path, timeout=10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.next_id = 1
        self.replies = {}
        self.events = []
        self.buffer = b""

    def close(self):
        self.sock.close()

    # --- frames

    def send_raw(self, data):
        self.sock.sendall(data)

    def _fill(self, n):
        while len(self.buffer) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError as err:
                raise ConnectionClosed("reset") from err
            if not chunk:
                raise ConnectionClosed("ended" if not self.buffer else "ended inside a frame")
            self.buffer += chunk

    def read_frame(self):
        """The next frame from the broker, decoded."""
        self._fill(HEADER.size)
        (length,) = HEADER.unpack_from(self.buffer)
        if length > MAX_FRAME_LEN:
            raise FrameError(f"the broker announced a {length}-byte frame")
        self._fill(HEADER.size + length)
        body = self.buffer[HEADER.size:HEADER.size + length]
        self.buffer = self.buffer[HEADER.size + length:]
        message = json.loads(body.decode("utf-8"))
        if not isinstance(message, dict) or "type" not in message:
            raise FrameError("a frame without a type")
        return message

    def wait_closed(self, timeout=10.0, replies=None):
        """The frames the broker sends within `timeout` seconds, and how it ended the
        connection (`ended` or `reset`), or None if it is still open then, or once it sent
        `replies` replies."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            if replies is not None and sum(f["type"] == "reply" for f in frames) == replies:
                return frames, None
            if len(self.buffer) < HEADER.size:
                ready, _, _ = select.select([self.sock], [], [], max(0, deadline - time.monotonic()))
                if not ready:
                    return frames, None
            try:
                frames.append(self.read_frame())
            except ConnectionClosed as closed:
                return frames, str(closed)

    # --- requests

    def send(self, op, **fields):
        """Sends a request without waiting for its answer and returns its id."""
        request_id = fields.pop("id", None)
        if request_id is None:
            request_id = self.next_id
            self.next_id += 1
        self.send_raw(encode_message({"id": request_id, "op": op, **fields}))
        return request_id

    def wait(self, request_id):
        """The successful reply to request `request_id`; raises `RemoteError` for an error."""
        while request_id not in self.replies:
            message = self.read_frame()
            kind = message["type"]
            if kind in ("reply", "error"):
                if message.get("id") is None:
                    raise RemoteError(message)  # about the connection: it is closing
                self.replies[message["id"]] = message
            elif kind in ("event", "resync"):
                self.events.append(message)
            # Other frame types may come with a later version; they are not ours to handle.
        message = self.replies.pop(request_id)
        if message["type"] == "error":
            raise RemoteError(message)
        return message

    def request(self, op, **fields):
        return self.wait(self.send(op, **fields))

    def hello(self, app, protocol=PROTOCOL_VERSION, **optional):
        return self.request("hello", client="protocol_client.py", client_version="1",
                            protocol=protocol, app=app, **optional)

    def get(self, key):
        """The value of `key` (bytes), or None when it has none."""
        return decode_value(self.request("get", key=key).get("value"))

    def set(self, key, value):
        self.request("set", key=key, value=encode_value(value))

    def delete(self, key):
        """Whether `key` had a value."""
        return self.request("delete", key=key)["deleted"]

    def keys(self):
        return self.request("keys")["keys"]

    def status(self):
        return self.request("status")

    def subscribe(self, keys=None):
        """Subscribes to `keys` (every visible key when None); returns `last_seq`."""
        return self.request("subscribe", keys=keys)["last_seq"]

    def next_event(self):
        """The next `event` or `resync` frame."""
        while not self.events:
            message = self.read_frame()
            if message["type"] in ("event", "resync"):
                self.events.append(message)
            elif message["type"] in ("reply", "error"):
                if message.get("id") is None:
                    raise RemoteError(message)
                self.replies[message["id"]] = message
        return self.events.pop(0)


def connect(path, app="pyclient"):
    conn = Connection(path)
    conn.hello(app)
    return conn


# --- scenarios run by tests/second_implementation.rs


def out(*parts):
    print(*parts, flush=True)


def verdict(expected_b64, actual):
    if actual is None:
        return "null"
    return "matches" if actual == base64.b64decode(expected_b64) else "differs"


def error_line(err):
    extra = {k: v for k, v in err.frame.items() if k not in ("type", "id", "code", "message")}
    extras = "".join(f" {k}={json.dumps(v)}" for k, v in sorted(extra.items()))
    return f"error id={json.dumps(err.id)} code={err.code}{extras}"


def describe(message):
    """A frame in one line, for the frames around a closed connection (they carry no value)."""
    if message["type"] == "error":
        return error_line(RemoteError(message))
    return f"{message['type']} id={json.dumps(message.get('id'))}"


def scenario_exchange(path, inputs):
    """Sets `inputs.write` and reads `inputs.read` (set by the Rust client), with hello, the
    set and the gets pipelined in one write as the document allows."""
    conn = Connection(path)
    write, read = inputs["write"], inputs["read"]
    requests = [
        {"id": 7, "op": "hello", "client": "protocol_client.py", "client_version": "1",
         "protocol": PROTOCOL_VERSION, "app": "pyclient"},
        {"id": 8, "op": "set", "key": write["key"], "value": write["value"]},
        {"id": 9, "op": "get", "key": write["key"]},
        {"id": 10, "op": "get", "key": read["key"]},
        {"id": 11, "op": "get", "key": "never.set"},
        # Ids are the client's own u64: the largest one comes back intact.
        {"id": 2**64 - 1, "op": "get", "key": read["key"]},
    ]
    conn.send_raw(b"".join(encode_message(r) for r in requests))
    hello = conn.wait(7)
    out(f"hello protocol={hello['protocol']} server={hello['server']}")
    conn.wait(8)
    out(f"set {write['key']} ok")
    out(f"get {write['key']} {verdict(write['value'], decode_value(conn.wait(9)['value']))}")
    out(f"get {read['key']} {verdict(read['value'], decode_value(conn.wait(10)['value']))}")
    out(f"get never.set {json.dumps(conn.wait(11)['value'])}")
    big = conn.wait(2**64 - 1)
    out(f"get id={big['id']} op={big['op']} {verdict(read['value'], decode_value(big['value']))}")
    # An empty value is a value, not "no value".
    conn.set("empty.value", b"")
    value = conn.get("empty.value")
    out(f"get empty.value {'empty' if value == b'' else repr(value)}")
    out(f"delete empty.value deleted={json.dumps(conn.delete('empty.value'))}")


def scenario_delete(path, inputs):
    conn = connect(path)
    key = inputs["key"]
    out(f"delete {key} deleted={json.dumps(conn.delete(key))}")
    out(f"delete {key} deleted={json.dumps(conn.delete(key))}")
    out(f"get {key} {json.dumps(conn.request('get', key=key).get('value'))}")


def scenario_keys(path, inputs):
    conn = connect(path)
    try:
        out("keys " + ",".join(sorted(conn.keys())))
    except RemoteError as err:
        out(f"keys: {error_line(err)}")
        out(f"then status: {conn.status()['type']}")


def scenario_status(path, inputs):
    conn = connect(path)
    status = conn.status()
    for field in ("server_version", "pid", "connections", "last_seq", "shared_store",
                  "legacy_store", "pending_repairs"):
        out(f"{field}={json.dumps(status[field])}")


def scenario_watch(path, inputs):
    """Subscribes to `inputs.first`, then to `inputs.keys` (a second subscribe replaces the
    first), says so on stdout, then reports events until one matches `inputs.until`. On an
    event setting `inputs.read.key` it reads that key on the same connection (events carry
    no value), so the read's reply and further events interleave."""
    conn = connect(path)
    conn.subscribe(inputs["first"])
    last_seq = conn.subscribe(inputs["keys"])
    out(f"subscribed last_seq={last_seq}")
    seen = last_seq
    read = inputs["read"]
    until = inputs["until"]
    while True:
        event = conn.next_event()
        if event["type"] == "resync":
            out(f"resync missed={event['missed']}")
            continue
        order = "increasing" if event["seq"] > seen else "NOT increasing"
        seen = event["seq"]
        carries = " CARRIES A VALUE" if "value" in event else ""
        out(f"event seq={event['seq']} key={event['key']} kind={event['kind']} {order}{carries}")
        if event["key"] == read["key"] and event["kind"] == "set":
            out(f"get {read['key']} {verdict(read['value'], conn.get(read['key']))}")
        if event["key"] == until["key"] and event["kind"] == until["kind"]:
            return


def scenario_lag(path, inputs):
    """Subscribes to every key, then reads nothing until a line arrives on stdin naming the
    last `seq` to wait for: meanwhile the broker drops what it cannot queue and says so with
    `resync` (perhaps more than once). Every key is visible to this subscriber, so every
    gap in `seq` must come right after a `resync`."""
    conn = connect(path)
    last_seq = conn.subscribe(None)
    out(f"subscribed last_seq={last_seq}")
    until_seq = json.loads(sys.stdin.readline())["until_seq"]
    seen, missed, announced, silent_gaps = last_seq, [], False, 0
    while seen < until_seq:
        event = conn.next_event()
        if event["type"] == "resync":
            missed.append(event["missed"])
            announced = True
            continue
        if event["seq"] <= seen:
            out(f"seq went from {seen} to {event['seq']}")
        if event["seq"] != seen + 1 and not announced:
            silent_gaps += 1
        seen, announced = event["seq"], False
    out(f"resynced: {bool(missed)}, each after missed events: {all(m > 0 for m in missed)}")
    out(f"silent gaps={silent_gaps} last seq={seen}")


def scenario_own_change(path, inputs):
    """A subscribed connection's own set: which frames come back (in any order)."""
    conn = connect(path)
    conn.subscribe(["own.key"])
    conn.send("set", key="own.key", value=encode_value(b"x"))
    frames = [conn.read_frame(), conn.read_frame()]
    out("; ".join(sorted(f"{m['type']} {m.get('op', m.get('kind'))}" for m in frames)))


def scenario_duplicate_ids(path, inputs):
    """Two requests in flight with the same id."""
    conn = connect(path)
    conn.set("dup.a", b"a")
    conn.send_raw(encode_message({"id": 5, "op": "get", "key": "dup.a"})
                  + encode_message({"id": 5, "op": "get", "key": "dup.b"}))
    frames = [conn.read_frame(), conn.read_frame()]
    out("; ".join(describe(m) for m in frames) + f"; then status: {conn.status()['type']}")


def scenario_version(path, inputs):
    """Hellos of other versions, each with a request pipelined behind it: refused whatever
    the rest of the hello holds, and the request is not served."""
    hellos = [
        ("version 2", {"id": 1, "op": "hello", "client": "protocol_client.py",
                       "client_version": "1", "protocol": PROTOCOL_VERSION + 1,
                       "app": "pyclient"}),
        ("version 0", {"id": 1, "op": "hello", "client": "protocol_client.py",
                       "client_version": "1", "protocol": 0, "app": "pyclient"}),
        ("version 2, reshaped", {"id": 1, "op": "hello", "protocol": 2, "app": ["new"]}),
    ]
    for name, hello in hellos:
        conn = Connection(path)
        conn.send_raw(encode_message(hello) + encode_message({"id": 2, "op": "status"}))
        frames, how = conn.wait_closed()
        said = "".join(f"{describe(message)}; " for message in frames)
        out(f"{name}: {said}{f'closed ({how})' if how else 'open'}")
        conn.close()


def scenario_before_hello(path, inputs):
    conn = Connection(path)
    conn.send(op="status")
    report_close(conn)


def report_close(conn):
    """Prints the frames the broker sent before it closed the connection, then how."""
    frames, how = conn.wait_closed()
    for message in frames:
        out(describe(message))
    out(f"closed ({how})" if how else "still open")


def scenario_invalid_keys(path, inputs):
    """Keys that are JSON strings but not keys fail alone; the connection serves on."""
    conn = connect(path)
    cases = [
        ("empty", ""),
        ("nul", "a\0b"),
        ("4097 bytes", "k" * 4097),
        ("2049 two-byte chars", "\u00e9" * 2049),
    ]
    for name, key in cases:
        for op, fields in (("get", {}), ("set", {"value": encode_value(b"v")}), ("delete", {})):
            try:
                conn.request(op, key=key, **fields)
                out(f"{op} {name}: accepted")
            except RemoteError as err:
                repeats = " REPEATS THE KEY" if key and key in err.message else ""
                out(f"{op} {name}: {error_line(err)}{repeats}")
    for name, key in (("4096 bytes", "k" * 4096), ("2048 two-byte chars", "\u00e9" * 2048)):
        out(f"get {name}: {json.dumps(conn.request('get', key=key).get('value'))}")
    try:
        conn.subscribe(["ok", ""])
        out("subscribe with an empty key: accepted")
    except RemoteError as err:
        out(f"subscribe with an empty key: {error_line(err)}")
    out(f"then status: {conn.status()['type']}")


def scenario_values(path, inputs):
    """The store's value limit, and values that are not standard padded base64."""
    conn = connect(path)
    limit = inputs["limit"]
    conn.set("at.limit", b"\xa5" * limit)
    out(f"set {limit} bytes: ok")
    try:
        conn.set("over.limit", b"\xa5" * (limit + 1))
        out(f"set {limit + 1} bytes: accepted")
    except RemoteError as err:
        out(f"set {limit + 1} bytes: {error_line(err)}")
    # Each on its own connection: a value that is not standard padded base64 is no valid message.
    for name, text in (("unpadded", "dG9rZW4"), ("urlsafe", "-_-_"), ("not base64", "%%%%")):
        bad = connect(path)
        bad.send("set", key="bad.value", value=text)
        frames, how = bad.wait_closed(timeout=2.0)
        said = "".join(f"{describe(message)}; " for message in frames)
        out(f"set {name}: {said}{f'closed ({how})' if how else 'open'}")
    out(f"first connection then: {conn.status()['type']}")


def scenario_oversized(path, inputs):
    """A frame of exactly the maximum is read; one byte more closes the connection."""
    conn = connect(path)
    # A set whose body is exactly MAX_FRAME_LEN bytes: the broker reads it and refuses the value.
    head = b'{"id":2,"op":"set","key":"huge","value":"'
    tail = b'"}'
    room = MAX_FRAME_LEN - len(head) - len(tail)
    value = b"A" * (room // 4 * 4)
    padding = b" " * (room - len(value))  # JSON whitespace keeps the body exactly at the limit
    body = head + value + tail + padding
    assert len(body) == MAX_FRAME_LEN
    conn.send_raw(frame(body))
    try:
        conn.wait(2)
        out("set in a 1 MiB frame: accepted")
    except RemoteError as err:
        out(f"set in a 1 MiB frame: {error_line(err)}")
    # Only the header: the broker must not wait for the body.
    conn.send_raw(HEADER.pack(MAX_FRAME_LEN + 1))
    report_close(conn)
    # Only that connection is affected.
    other = connect(path)
    out(f"another connection: {other.status()['type']}")


def scenario_malformed(path, inputs):
    """Bodies that are not valid messages, each on its own connection."""
    bodies = [
        ("not json", b"{not json"),
        ("not an object", b"[1,2]"),
        ("unknown op", b'{"id":2,"op":"frobnicate"}'),
        ("no id", b'{"op":"status"}'),
        ("id not an integer", b'{"id":"2","op":"status"}'),
        ("key not a string", b'{"id":2,"op":"get","key":5}'),
        ("unknown field", b'{"id":2,"op":"status","later":true}'),
        ("negative id", b'{"id":-1,"op":"status"}'),
        ("id over u64", b'{"id":18446744073709551616,"op":"status"}'),
        ("lone surrogate key", b'{"id":2,"op":"get","key":"\\ud800"}'),
        ("control characters in key", b'{"id":2,"op":"get","key":"a\\n\\tb"}'),
    ]
    for name, body in bodies:
        conn = connect(path)
        conn.send_raw(frame(body))
        frames, how = conn.wait_closed(timeout=5.0, replies=1)
        said = "".join(f"{describe(message)}; " for message in frames)
        out(f"{name}: {said}{f'closed ({how})' if how else 'open'}")
        conn.close()


def scenario_hello(path, inputs):
    """Hellos the broker accepts or refuses, each on its own connection with a request
    pipelined behind it."""
    base = {"client": "protocol_client.py", "client_version": "1",
            "protocol": PROTOCOL_VERSION, "app": "pyclient"}
    cases = [
        ("plain", {}),
        ("expect_store this", {"expect_store": inputs["store"]}),
        ("expect_store other", {"expect_store": "vault:/elsewhere/vault.db"}),
        ("require_os_keyring", {"require_os_keyring": True}),
        ("require_os_keyring false", {"require_os_keyring": False}),
        ("app of 64", {"app": "a" * 64}),
        ("app of 65", {"app": "a" * 65}),
        ("app with a space", {"app": "my app"}),
        ("app starting with a dot", {"app": ".app"}),
        ("app empty", {"app": ""}),
        ("without client", {"client": None}),
        ("without client_version", {"client_version": None}),
    ]
    for name, change in cases:
        hello = {"id": 1, "op": "hello", **base, **change}
        hello = {k: v for k, v in hello.items() if v is not None}
        conn = Connection(path)
        conn.send_raw(encode_message(hello) + encode_message({"id": 2, "op": "status"}))
        frames, how = conn.wait_closed(timeout=5.0, replies=2)
        said = ""
        for message in frames:
            said += describe(message)
            if message["type"] == "reply" and message["op"] == "hello":
                said += f" store={json.dumps(message.get('store'))}"
            said += "; "
        out(f"{name}: {said}{f'closed ({how})' if how else 'open'}")
        conn.close()


def scenario_pipeline(path, inputs):
    """Many requests in one write, on many keys, before reading any reply."""
    count = inputs["count"]
    conn = connect(path)
    requests = []
    for i in range(count):
        key = f"pipe.{i // 2 % 16}"
        if i % 2 == 0:
            requests.append({"id": 1000 + i, "op": "set", "key": key,
                             "value": encode_value(str(i).encode())})
        else:
            requests.append({"id": 1000 + i, "op": "get", "key": key})
    conn.send_raw(b"".join(encode_message(r) for r in requests))
    order, wrong = [], 0
    while len(order) < count:
        message = conn.read_frame()
        order.append(message["id"])
        i = message["id"] - 1000
        if message["type"] != "reply":
            wrong += 1
        elif i % 2 == 1 and decode_value(message["value"]) != str(i - 1).encode():
            wrong += 1  # a get sees the set sent just before it on its key
    out(f"replies={len(order)} distinct={len(set(order))} wrong={wrong}")


def scenario_silent(path, inputs):
    """Connects and says nothing, not even hello."""
    conn = Connection(path)
    frames, how = conn.wait_closed(timeout=inputs["wait"])
    said = "".join(f"{describe(message)}; " for message in frames)
    out(f"silent before hello: {said}{f'closed ({how})' if how else 'open'}")


def scenario_stall(path, inputs):
    """Silence between frames is fine; a frame left unfinished is not."""
    conn = connect(path)
    time.sleep(inputs["wait"])
    out(f"silent between frames, then status: {conn.status()['type']}")
    body = encode_message({"id": 9, "op": "status"})
    conn.send_raw(body[:len(body) // 2])
    frames, how = conn.wait_closed(timeout=inputs["wait"] * 4)
    said = "".join(f"{describe(message)}; " for message in frames)
    out(f"half a frame: {said}{f'closed ({how})' if how else 'open'}")


SCENARIOS = {
    name[len("scenario_"):]: function
    for name, function in globals().items()
    if name.startswith("scenario_")
}


def main():
    path, name = sys.argv[1], sys.argv[2]
    # The first line of stdin holds the inputs; a scenario may wait for later lines.
    SCENARIOS[name](path, json.loads(sys.stdin.readline().strip() or "{}"))


if __name__ == "__main__":
    main()
