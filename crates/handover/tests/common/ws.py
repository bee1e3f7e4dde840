"""WebSocket peers for the tests, on the `websockets` library (PyPI).

    python3 ws.py server NAME PORT_FILE   # echoes every message as "NAME:message"
    python3 ws.py client URL              # driven line by line on stdin

The server listens on an ephemeral loopback port and writes it to PORT_FILE; each connection's
close code (as the client side sent it) is appended to PORT_FILE.closes. The client reads
commands from stdin and answers each with one line on stdout:

    open ID            -> "opened ID" | "failed ID <reason>"
    send ID TEXT       -> "reply ID <what came back>" | "failed ID <reason>"
    state ID SECONDS   -> "closed ID <close code>" once the server side closed it within SECONDS,
                          else "open ID"
    quit
"""

import asyncio
import os
import sys

try:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve
except ImportError:  # websockets < 13
    from websockets import connect, serve


async def run_server(name, port_file):
    async def echo(websocket, *_):
        try:
            async for message in websocket:
                await websocket.send(f"{name}:{message}")
        finally:
            code = websocket.close_code if websocket.close_code is not None else "none"
            with open(port_file + ".closes", "a") as f:
                f.write(f"{code}\n")

    async with serve(echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, port_file)
        await asyncio.Future()


async def run_client(url):
    loop = asyncio.get_running_loop()
    sockets = {}

    def say(line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "quit":
            return
        parts = line.rstrip("\n").split(" ", 2)
        command, key = parts[0], parts[1] if len(parts) > 1 else ""
        try:
            if command == "open":
                sockets[key] = await asyncio.wait_for(connect(url, open_timeout=5), 10)
                say(f"opened {key}")
            elif command == "send":
                ws = sockets[key]
                await ws.send(parts[2])
                reply = await asyncio.wait_for(ws.recv(), 10)
                say(f"reply {key} {reply}")
            elif command == "state":
                ws = sockets[key]
                try:
                    await asyncio.wait_for(ws.wait_closed(), float(parts[2]))
                    code = ws.close_code if ws.close_code is not None else "none"
                    say(f"closed {key} {code}")
                except asyncio.TimeoutError:
                    say(f"open {key}")
            else:
                say(f"failed {key} unknown command {command}")
        except Exception as e:  # every failure is an answer the test reads
            say(f"failed {key} {type(e).__name__}: {e}".replace("\n", " "))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(run_server(sys.argv[2], sys.argv[3]))
    else:
        asyncio.run(run_client(sys.argv[2]))
