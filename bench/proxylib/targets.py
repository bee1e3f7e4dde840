"""The processes a run needs: the backends (one nginx worker on three ports), and each proxy under
test with the same configuration it would have in production, minus logging: handover, HAProxy
(`http-reuse always`, the fair setting for upstream keep-alive) and nginx (upstream keepalive 64).
Each also terminates TLS on TLS_PORT (the same P-256 certificate for all, made by `openssl` for the
run; TLS 1.2 and 1.3, ALPN h2 and http/1.1, session resumption as each does by default) in front of
the same backends over HTTP/1.1 keep-alive. Any of them can start with its first backend draining,
or under callgrind."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

from .system import children_of, wait_port

BACKENDS = [18001, 18002, 18003]
HTTP_PORT = 18080
TCP_PORT = 18090
TLS_PORT = 18443
CONTROL_PORT = 18099
BODY = "x" * 98
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def backend_conf(work):
    servers = "\n".join(
        f'  server {{ listen 127.0.0.1:{p} backlog=4096; location / {{ return 200 "{BODY}\\n"; }} }}'
        for p in BACKENDS
    )
    return f"""worker_processes 1; daemon off; pid {work}/backend.pid; worker_rlimit_nofile 20000;
error_log {work}/backend.err;
events {{ worker_connections 16384; }}
http {{
  default_type text/plain; keepalive_requests 10000000; keepalive_timeout 65s; access_log off;
{servers}
}}
"""


def start_backends(work):
    """The backend nginx; returns (Popen, its pids)."""
    path = os.path.join(work, "backend.conf")
    with open(path, "w") as f:
        f.write(backend_conf(work))
    proc = subprocess.Popen(["nginx", "-c", path, "-e", os.path.join(work, "backend.err")], start_new_session=True)
    for port in BACKENDS:
        if not wait_port(port):
            raise RuntimeError(f"the backend nginx did not listen on {port}")
    return proc, children_of(proc.pid)


def tls_files(work):
    """A self-signed P-256 certificate for 127.0.0.1 (made once per work directory): (cert, key,
    cert+key for HAProxy)."""
    cert, key, both = (os.path.join(work, name) for name in ("tls.pem", "tls.key", "tls-both.pem"))
    if not os.path.exists(both):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-keyout", key, "-out", cert, "-subj", "/CN=bench.test",
                        "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"],
                       check=True, capture_output=True)
        with open(both, "w") as f:
            f.write(open(cert).read() + open(key).read())
    return cert, key, both


def nginx_conf(work, workers, draining=False, single_process=False, tls=True):
    # nginx has no runtime API in its free version: a draining server is marked `down`.
    upstream = " ".join(
        f"server 127.0.0.1:{p}{' down' if draining and i == 0 else ''};" for i, p in enumerate(BACKENDS)
    )
    master = "master_process off; " if single_process else ""
    return f"""load_module {NGINX_STREAM_MODULE};
{master}worker_processes {workers}; daemon off; pid {work}/nginx.pid; worker_rlimit_nofile 20000;
error_log {work}/nginx.err;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  upstream be {{ {upstream} keepalive 64; keepalive_requests 10000000; }}
  server {{ listen 127.0.0.1:{HTTP_PORT} backlog=4096;
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
{nginx_tls_server(work) if tls else ""}
}}
stream {{
  upstream be_tcp {{ {upstream} }}
  server {{ listen 127.0.0.1:{TCP_PORT} backlog=4096; proxy_pass be_tcp; }}
}}
"""


def nginx_tls_server(work):
    cert, key, _ = tls_files(work)
    return f"""  server {{ listen 127.0.0.1:{TLS_PORT} ssl http2 backlog=4096;
    ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""


def haproxy_conf(workers, work, tls=True):
    servers = "\n".join(f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(BACKENDS))
    # 10,100 connections need 20,214 descriptors by HAProxy's count (two per connection) but idle
    # client connections use one each: this machine's hard limit of 20,000 is enough once HAProxy
    # is told not to refuse to start ("no strict-limits").
    return f"""global
    nbthread {workers}
    maxconn 10100
    ulimit-n 20000
    no strict-limits
    stats socket {work}/haproxy.sock mode 600 level admin
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 30s
    maxconn 10100
frontend fe_http
    mode http
    bind 127.0.0.1:{HTTP_PORT}
    default_backend be
backend be
    mode http
    balance roundrobin
    http-reuse always
{servers}
{haproxy_tls_frontend(work) if tls else ""}frontend fe_tcp
    mode tcp
    bind 127.0.0.1:{TCP_PORT}
    default_backend be_tcp
backend be_tcp
    mode tcp
    balance roundrobin
{servers}
"""


def tls_listener(work):
    cert, key, _ = tls_files(work)
    return f"""[[listeners]]
name = "tls"
kind = "http"
bind = "127.0.0.1:{TLS_PORT}"
pool = "web"
tls = {{ certificates = [{{ cert = "{cert}", key = "{key}" }}] }}
"""


_TLS_SUPPORT = {}


def supports_tls(binary, work):
    """Whether this handover binary knows TLS listeners (an A/B against an older build may not):
    asked once, with `handover check` on a configuration that has one."""
    if binary not in _TLS_SUPPORT:
        path = os.path.join(work, "tls-probe.toml")
        with open(path, "w") as f:
            f.write(handover_conf(work, tls=True))
        _TLS_SUPPORT[binary] = subprocess.run([binary, "check", "--config", path], capture_output=True).returncode == 0
    return _TLS_SUPPORT[binary]


def haproxy_tls_frontend(work):
    return f"""frontend fe_tls
    mode http
    bind 127.0.0.1:{TLS_PORT} ssl crt {tls_files(work)[2]} alpn h2,http/1.1
    default_backend be
"""


def handover_conf(work, tls=True):
    backends = "".join(
        f'\n[[pools.{pool}.backends]]\naddress = "127.0.0.1:{p}"\nvm = "vm-{i}"\n'
        for pool in ("web", "tcp")
        for i, p in enumerate(BACKENDS)
    )
    return f"""[control]
bind = "127.0.0.1:{CONTROL_PORT}"

[[listeners]]
name = "web"
kind = "http"
bind = "127.0.0.1:{HTTP_PORT}"
pool = "web"

[[listeners]]
name = "tcp"
kind = "tcp"
bind = "127.0.0.1:{TCP_PORT}"
pool = "tcp"

{tls_listener(work) if tls else ""}
[pools.web]
algorithm = "round_robin"

[pools.tcp]
algorithm = "round_robin"
{backends}"""


def with_tls(kind, binary, work, single_process):
    """Whether the proxy gets its TLS listener: not under callgrind (which counts the plain HTTP/1.1
    path), nor for a handover binary that predates TLS."""
    return not single_process and (kind != "handover" or supports_tls(binary, work))


def command_for(kind, binary, workers, work, draining, single_process=False):
    """(argv, env) that starts a proxy of this kind."""
    tls = with_tls(kind, binary, work, single_process)
    if kind == "handover":
        path = os.path.join(work, "handover.toml")
        with open(path, "w") as f:
            f.write(handover_conf(work, tls=tls))
        return [binary, "run", "--config", path, "--workers", str(workers)], dict(os.environ, RUST_LOG="warn")
    if kind == "haproxy":
        path = os.path.join(work, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(haproxy_conf(workers, work, tls=tls))
        return ["haproxy", "-db", "-f", path], None
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write(nginx_conf(work, workers, draining, single_process, tls=tls))
    return ["nginx", "-c", path, "-e", os.path.join(work, "nginx.err")], None


def start(kind, binary, workers, work, draining=False, valgrind=None):
    """Starts a proxy (under `valgrind` argv if given), waits until it listens, drains its first
    backend if asked; returns the Popen."""
    argv, env = command_for(kind, binary, workers, work, draining, single_process=valgrind is not None)
    if valgrind:
        argv = valgrind + argv
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, f"{kind}.log"), "w"),
        env=env,
        start_new_session=True,
    )
    patience = 60 if valgrind else 10
    tls = with_tls(kind, binary, work, valgrind is not None)
    if not (wait_port(HTTP_PORT, patience) and wait_port(TCP_PORT, patience) and (not tls or wait_port(TLS_PORT, patience))):
        stop(proc)
        raise RuntimeError(f"{kind} did not listen (see {work}/{kind}.log)")
    time.sleep(2 if valgrind else 0.3)
    if draining:
        drain_first_backend(kind, work)
    return proc


def drain_first_backend(kind, work):
    """Puts the first backend in drain: handover through its control API (a migration prepare),
    HAProxy through its runtime API. (nginx was started with it marked down.)"""
    if kind == "handover":
        request = urllib.request.Request(
            f"http://127.0.0.1:{CONTROL_PORT}/v1/vms/vm-0/migration",
            data=json.dumps({"phase": "prepare"}).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            if reply.status != 200:
                raise RuntimeError(f"handover refused the prepare: {reply.status}")
    elif kind == "haproxy":
        with socket.socket(socket.AF_UNIX) as control:
            control.connect(os.path.join(work, "haproxy.sock"))
            control.sendall(b"set server be/s0 state drain\n")
            answer = control.recv(4096).decode().strip()
            if answer:
                raise RuntimeError(f"HAProxy refused the drain: {answer}")


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Ports must be free for the next proxy.
    deadline = time.time() + 5
    while time.time() < deadline and any(wait_port(p, 0.05) for p in (HTTP_PORT, TCP_PORT, TLS_PORT)):
        time.sleep(0.1)
