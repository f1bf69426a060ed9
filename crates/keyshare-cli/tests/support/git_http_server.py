#!/usr/bin/env python3
"""A git smart-HTTP server for tests: `git http-backend` (CGI) behind HTTP basic auth.

Serves the repositories under GIT_PROJECT_ROOT on 127.0.0.1 only, on a free port, and prints
"port N" on stdout once it is listening (the test's readiness signal). Every request must carry
the username and password given in TEST_GIT_USER / TEST_GIT_PASSWORD (environment, never
argv); otherwise it answers 401 with a Basic challenge, so git asks its credential helpers.
Each request is logged on stderr as "<status> <method> <path>".
"""

import base64
import hmac
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ROOT = os.environ["GIT_PROJECT_ROOT"]
EXPECTED = base64.b64encode(
    f"{os.environ['TEST_GIT_USER']}:{os.environ['TEST_GIT_PASSWORD']}".encode()
).decode()
BACKEND = subprocess.run(
    ["git", "--exec-path"], check=True, capture_output=True, text=True
).stdout.strip() + "/git-http-backend"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def authorized(self):
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme == "Basic" and hmac.compare_digest(token.strip(), EXPECTED)

    def handle_any(self):
        if not self.authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="keyshare-test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            print(f"401 {self.command} {self.path}", file=sys.stderr, flush=True)
            return
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", ""),
            "GIT_PROJECT_ROOT": ROOT,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": os.environ["TEST_GIT_USER"],
            "REMOTE_ADDR": self.client_address[0],
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.0",
        }
        if self.headers.get("Git-Protocol"):
            env["HTTP_GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        result = subprocess.run([BACKEND], input=body, env=env, capture_output=True)
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        print(f"{status} {self.command} {self.path}", file=sys.stderr, flush=True)

    do_GET = handle_any
    do_POST = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
