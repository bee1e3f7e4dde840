"""A backend that records exactly what it parsed, for the HTTP edge tests.

    python3 recorder.py KIND PORT_FILE LOG_FILE

KIND is the server whose parser is under test: `stdlib` (http.server, with a hand-written chunked
reader as small apps have: lenient, the classic smuggling victim), `aiohttp` (llhttp) or `gunicorn`
(its own parser, gthread workers so connections are kept alive). It listens on an ephemeral
loopback port, writes the port to PORT_FILE, and for every request it parses appends one JSON line
to LOG_FILE — {"seq", "method", "target", "body" (hex, decoded), "conn"} — before it answers 200
with `X-Seq: <seq>` and a body that repeats method and target, so a client can tell which request
a response belongs to.
"""

import json
import os
import socket
import sys
import threading

KIND, PORT_FILE, LOG_FILE = sys.argv[1], sys.argv[2], sys.argv[3]
LOCK = threading.Lock()
SEQ = [0]


def record(method, target, body, conn):
    """Appends a record; returns its sequence number."""
    with LOCK:
        SEQ[0] += 1
        seq = SEQ[0]
        line = json.dumps({"seq": seq, "method": method, "target": target, "body": body.hex(), "conn": conn})
        with open(LOG_FILE, "a") as log:
            log.write(line + "\n")
            log.flush()
    return seq


def answer_body(seq, method, target):
    return f"{seq} {method} {target}".encode()


def announce(port):
    tmp = PORT_FILE + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, PORT_FILE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stdlib():
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return body
                    body += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def handle_any(self):
            body = self.read_body()
            seq = record(self.command, self.path, body, id(self.connection))
            reply = answer_body(seq, self.command, self.path)
            self.send_response(200)
            self.send_header("X-Seq", str(seq))
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply)

        def __getattr__(self, name):
            if name.startswith("do_"):
                return self.handle_any
            raise AttributeError(name)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    announce(server.server_address[1])
    server.serve_forever()


def run_aiohttp():
    import asyncio

    from aiohttp import web

    async def handle(request):
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seq = record(request.method, request.raw_path, body, str(peer))
        reply = answer_body(seq, request.method, request.raw_path)
        return web.Response(body=reply, headers={"X-Seq": str(seq)})

    async def main():
        # The low-level server: every request reaches the handler, whatever its target.
        server = web.Server(handle)
        runner = web.ServerRunner(server, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        announce(port)
        await asyncio.Event().wait()

    asyncio.run(main())


def wsgi_app(environ, start_response):
    body = environ["wsgi.input"].read()
    target = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
    seq = record(environ["REQUEST_METHOD"], target, body, environ.get("REMOTE_PORT"))
    reply = answer_body(seq, environ["REQUEST_METHOD"], target)
    start_response("200 OK", [("X-Seq", str(seq)), ("Content-Length", str(len(reply)))])
    return [reply]


def run_gunicorn():
    from gunicorn.app.base import BaseApplication

    port = free_port()

    class App(BaseApplication):
        def load_config(self):
            for key, value in {
                "bind": f"127.0.0.1:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": 8,
                "keepalive": 60,
                "loglevel": "warning",
                "when_ready": lambda _server: announce(port),
            }.items():
                self.cfg.set(key, value)

        def load(self):
            return wsgi_app

    App().run()


{"stdlib": run_stdlib, "aiohttp": run_aiohttp, "gunicorn": run_gunicorn}[KIND]()
