#!/usr/bin/env python3
"""An independent decoder for VS Code's secret rows, to check what keyshare writes.

Written from the format description (legacy-format.md), sharing no code with keyshare:
sqlite3 from the standard library, AES and PBKDF2 from the `cryptography` package.

usage: electron_decode.py STATE_DB   (the Linux keyring password, if any, on stdin)

Prints one JSON object: {"<key after secret://>": "<hex of the plaintext>", ...} for every
secret row the target marker lists with 1. Exits non-zero, naming the row, when a row is not
TEXT, not exactly Node's Buffer JSON, not listed, or does not decrypt with valid padding.
"""

import json
import sqlite3
import sys

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

PREFIX = "secret://"
MARKER = "__$__targetStorageMarker"


def derive(password: bytes) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA1(), length=16, salt=b"saltysalt", iterations=1)
    return kdf.derive(password)


def decrypt(blob: bytes, keyring_password) -> bytes:
    if blob == b"":
        return b""
    version, body = blob[:3], blob[3:]
    if version == b"v10":
        key = derive(b"peanuts")
    elif version == b"v11":
        if keyring_password is None:
            raise ValueError("a v11 blob and no keyring password")
        key = derive(keyring_password)
    else:
        raise ValueError("unknown version tag %r" % version)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(b" " * 16)).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def main() -> int:
    db = sys.argv[1]
    password = sys.stdin.buffer.read()
    keyring_password = password if password else None
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    marker_row = conn.execute("SELECT value FROM ItemTable WHERE key = ?", (MARKER,)).fetchone()
    marker = json.loads(marker_row[0]) if marker_row else {}
    out = {}
    for key, kind, value in conn.execute(
        "SELECT key, typeof(value), value FROM ItemTable WHERE substr(key, 1, 9) = ?", (PREFIX,)
    ):
        name = key[len(PREFIX):]
        if kind != "text":
            print("row %r is stored as %s, not text" % (name, kind), file=sys.stderr)
            return 1
        if marker.get(key) != 1:
            print("row %r is not in the target marker with 1" % name, file=sys.stderr)
            return 1
        parsed = json.loads(value)
        if set(parsed) != {"type", "data"} or parsed["type"] != "Buffer":
            print("row %r is not a Node Buffer" % name, file=sys.stderr)
            return 1
        blob = bytes(parsed["data"])
        canonical = '{"type":"Buffer","data":[%s]}' % ",".join(str(b) for b in blob)
        if value != canonical:
            print("row %r is not exactly JSON.stringify(buffer)" % name, file=sys.stderr)
            return 1
        try:
            out[name] = decrypt(blob, keyring_password).hex()
        except ValueError as e:
            print("row %r does not decrypt: %s" % (name, e), file=sys.stderr)
            return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
