"""gRPC peers for the tests, on grpcio (raw-bytes methods: no generated code needed).

    python3 grpc_peer.py server NAME PORT_FILE [CERT KEY]
    python3 grpc_peer.py client TARGET        # driven line by line on stdin

The server (HTTP/2 cleartext, or TLS with CERT and KEY) listens on an ephemeral loopback port,
writes it to PORT_FILE, and serves:
    /test.Echo/Unary  -> "NAME:<request>"
    /test.Echo/Chat   -> bidirectional: "NAME:<message>" for every message, until the client ends

The client answers each command with one line:
    unary TEXT         -> "reply <response>" | "failed <code> <details>"
    open ID            -> "opened ID"                      (a Chat call, kept open)
    say ID TEXT        -> "reply ID <response>" | "failed ID <code> <details>"
    end ID             -> "ended ID <status code>"         (the client half-closes; trailers read)
    quit
"""

import queue
import sys
import threading
import time
from concurrent import futures

import grpc


def run_server(name, port_file, tls=None):
    def unary(request, context):
        return name.encode() + b":" + request

    def chat(requests, context):
        for message in requests:
            yield name.encode() + b":" + message

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    if tls:
        cert, key = (open(path, "rb").read() for path in tls)
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    import os

    os.replace(port_file + ".tmp", port_file)
    server.wait_for_termination()


class Call:
    """A Chat call fed from a queue."""

    END = object()

    def __init__(self, channel):
        self.outgoing = queue.Queue()
        chat = channel.stream_stream("/test.Echo/Chat")
        self.responses = chat(iter(self.outgoing.get, Call.END), timeout=120)

    def say(self, text):
        self.outgoing.put(text.encode())
        return next(self.responses).decode()

    def end(self):
        self.outgoing.put(Call.END)
        for _ in self.responses:
            pass
        return self.responses.code().name


def run_client(target):
    channel = grpc.insecure_channel(target)
    unary = channel.unary_unary("/test.Echo/Unary")
    calls = {}

    def say(line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        parts = line.rstrip("\n").split(" ", 2)
        command = parts[0]
        try:
            if command == "quit":
                return
            if command == "unary":
                say("reply " + unary(" ".join(parts[1:]).encode(), timeout=10).decode())
            elif command == "open":
                calls[parts[1]] = Call(channel)
                say(f"opened {parts[1]}")
            elif command == "say":
                say(f"reply {parts[1]} " + calls[parts[1]].say(parts[2]))
            elif command == "end":
                say(f"ended {parts[1]} " + calls[parts[1]].end())
            else:
                say(f"failed unknown command {command}")
        except grpc.RpcError as e:
            key = parts[1] + " " if command in ("say", "end") else ""
            say(f"failed {key}{e.code().name} {e.details()}".replace("\n", " "))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        run_server(sys.argv[2], sys.argv[3], sys.argv[4:6] if len(sys.argv) > 5 else None)
    else:
        run_client(sys.argv[2])
