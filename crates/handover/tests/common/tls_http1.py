"""An HTTP/1.1 backend over TLS (Python's ssl module, asyncio), for the TLS-to-backends tests.

    python3 tls_http1.py server NAME PORT_FILE CERT KEY

Listens on an ephemeral port of 127.0.0.1 (written to PORT_FILE once listening) and serves
keep-alive HTTP/1.1 over TLS. Every connection gets a number; PORT_FILE.conns holds how many TLS
connections were accepted so far. A request is answered `NAME conn=N path=PATH` (with its body
length where it had one). `GET /close` is answered the same, and then the connection is closed
without saying so (as a backend's idle timeout would). A WebSocket handshake (`Upgrade:
websocket`) is answered 101 and every byte that follows is echoed back until the client closes.
"""

import asyncio
import base64
import hashlib
import os
import ssl
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def main():
    _, mode, name, port_file, cert, key = sys.argv
    assert mode == "server"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    connections = 0

    async def serve(reader, writer):
        nonlocal connections
        connections += 1
        number = connections
        with open(port_file + ".conns.tmp", "w") as f:
            f.write(str(connections))
        os.replace(port_file + ".conns.tmp", port_file + ".conns")
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                fields = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        fields[k.strip().lower()] = v.strip()
                length = int(fields.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                if fields.get("upgrade", "").lower() == "websocket":
                    accept = base64.b64encode(
                        hashlib.sha1(fields["sec-websocket-key"].encode() + GUID).digest()
                    ).decode()
                    writer.write(
                        (
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                        ).encode()
                    )
                    await writer.drain()
                    while True:
                        data = await reader.read(65536)
                        if not data:
                            return
                        writer.write(data)
                        await writer.drain()
                text = f"{name} conn={number} path={path}"
                if body:
                    text += f" body={len(body)}"
                text = text.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
                    + str(len(text)).encode()
                    + b"\r\n\r\n"
                    + text
                )
                await writer.drain()
                if method == "GET" and path == "/close":
                    await asyncio.sleep(0.05)
                    return
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass

    async def run():
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(port_file + ".tmp", port_file)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
