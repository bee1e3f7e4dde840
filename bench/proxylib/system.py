"""What /proc says about processes and the machine, and waiting for ports and quiet."""

import os
import socket
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message):
    print(message, file=sys.stderr, flush=True)


def children_of(pid):
    """pid and all its descendants."""
    found = [pid]
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(fields[1]) == pid:
                        found.extend(children_of(int(entry)))
                except OSError:
                    pass
    except OSError:
        pass
    return found


def cpu_split(pids):
    """(user, system) CPU of these processes (all their threads), in seconds."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids):
    """User + system CPU of these processes (all their threads), in seconds."""
    return sum(cpu_split(pids))


def memory_kib(pids, field):
    """Sum of a /proc/PID/status field (VmRSS, VmHWM) over these processes, KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def machine_seconds():
    """(busy, steal) CPU seconds of the whole machine since boot. Steal is time the hypervisor
    gave this VM's CPUs to someone else: noise no process of ours can see."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    steal = fields[7]
    return (sum(fields[:7]) - idle) / CLK_TCK, steal / CLK_TCK


def wait_quiet(limit=0.15, longest=60):
    """Waits until the machine uses less than `limit` cores (at most `longest` seconds)."""
    started = time.time()
    while time.time() - started < longest:
        before, _ = machine_seconds()
        time.sleep(1)
        after, _ = machine_seconds()
        if after - before < limit:
            return
    log(f"  (machine still busy after {longest} s; measuring anyway)")


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False
