"""The one reader of /proc: child processes, resident memory, CPU time, the CPU's description (Linux; empty
answers elsewhere).

Used to watch Triton's Python-backend stubs, to sum a server's memory for the soak test, and to account
CPU time in the benchmarks.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

PROC = Path("/proc")
STUB_BINARY = "triton_python_backend_stub"
SHM_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the parenthesised command name: state, ppid, pgrp, ... (field 3 onwards)."""
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def _pids() -> list[str]:
    return [entry.name for entry in PROC.iterdir() if entry.name.isdigit()] if PROC.is_dir() else []


def child_processes(parent: int) -> dict[int, list[str]]:
    """Live direct children of `parent`: pid -> argv."""
    children: dict[int, list[str]] = {}
    for pid in _pids():
        try:
            state, ppid = _stat_fields(pid)[:2]
            if int(ppid) == parent and state != "Z":
                children[int(pid)] = (PROC / pid / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return children


def is_backend_stub(argv: list[str]) -> bool:
    """Whether a process is a Python-backend stub (the one test both `serve` and the container use)."""
    return bool(argv) and argv[0].endswith(STUB_BINARY)


def stub_instance(argv: list[str]) -> str:
    """The model instance a Python-backend stub serves (its 9th argument; else its model's directory)."""
    if len(argv) > 8 and argv[8]:
        return argv[8]
    return Path(argv[1]).parent.parent.name if len(argv) > 1 else "?"


def backend_stubs(server_pid: int) -> dict[int, str]:
    """Live Python-backend stubs of a tritonserver: pid -> model instance (e.g. clip_preprocess_0_0)."""
    return {pid: stub_instance(argv) for pid, argv in child_processes(server_pid).items() if is_backend_stub(argv)}


def is_running(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def orphaned_backend_stubs() -> dict[int, str]:
    """This user's Python-backend stubs whose tritonserver is gone: pid -> model instance.

    A stub is started with its server's pid as its 6th argument and is meant to exit when that server dies;
    after a server is SIGKILLed (its supervisor was), some hang instead (seen: stuck in a futex for 30+
    minutes, holding their shared memory). Such a stub has been re-parented and the server it names is no
    longer running. Only stubs in our own pid namespace are judged (a container's stubs name pids of its
    namespace), so a live server's stubs, here or in a container, are never listed.
    """
    orphans: dict[int, str] = {}
    uid, namespace = os.getuid(), _pid_namespace("self")
    for pid in _pids():
        try:
            argv = (PROC / pid / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not is_backend_stub(argv) or (PROC / pid).stat().st_uid != uid or _pid_namespace(pid) != namespace:
                continue
            state, ppid = _stat_fields(pid)[:2]
            server = int(argv[5]) if len(argv) > 5 and argv[5].isdigit() else None
            if state != "Z" and server is not None and server != int(ppid) and not is_running(server):
                orphans[int(pid)] = stub_instance(argv)
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return orphans


def _pid_namespace(pid: int | str) -> str:
    return os.readlink(PROC / str(pid) / "ns" / "pid")


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 if it is gone)."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its direct children (tritonserver and its backend stubs)."""
    return sum(rss_bytes(p) for p in [pid, *child_processes(pid)])


def python_backend_shared_memory(server_pid: int) -> set[Path]:
    """The Python backend's shared-memory files that a server and its stubs have mapped.

    Triton removes them when it exits by itself; after a SIGKILL they stay in /dev/shm (tens of MB each)
    unless whoever killed it removes them.
    """
    return {Path(name) for pid in (server_pid, *backend_stubs(server_pid)) for name in _mapped_shared_memory(pid)}


def orphaned_python_backend_shared_memory(min_age_s: float = 60.0) -> list[Path]:
    """Python-backend shared-memory files of this user that no process maps any more, older than `min_age_s`.

    What a tritonserver killed without its supervisor's help (the supervisor itself was SIGKILLed) leaves
    in /dev/shm. Only our own user's files, and only if no process we can see maps them: another user's
    server, whose memory maps we cannot read, is never touched; the age keeps us off regions being created.
    """
    directory = Path("/dev/shm")
    prefix = Path(SHM_PREFIX).name
    try:
        candidates = [path for path in directory.iterdir() if path.name.startswith(prefix)]
    except OSError:
        return []
    now, uid = time.time(), os.getuid()
    candidates = [path for path in candidates if _owned_and_old(path, uid, now - min_age_s)]
    if not candidates:
        return []
    mapped = {name for pid in _pids() for name in _mapped_shared_memory(pid)}
    return [path for path in candidates if str(path) not in mapped]


def _mapped_shared_memory(pid: int | str) -> set[str]:
    """Paths of the Python backend's shared-memory files a process maps (empty if it cannot be read)."""
    try:
        maps = (PROC / str(pid) / "maps").read_text()
    except OSError:
        return set()
    fields = (line.split(None, 5) for line in maps.splitlines() if SHM_PREFIX in line)
    return {parts[5] for parts in fields if len(parts) == 6}


def _owned_and_old(path: Path, uid: int, before: float) -> bool:
    try:
        status = path.stat()
    except OSError:
        return False
    return status.st_uid == uid and status.st_mtime < before


def process_group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (a server started in its own)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _pids():
        try:
            fields = _stat_fields(pid)
            if int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / ticks


def cpu_info() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo: model name, family, flags ({} off Linux)."""
    try:
        text = (PROC / "cpuinfo").read_text()
    except OSError:
        return {}
    block = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines()) if k.strip()}


def cpu_account() -> dict[str, float]:
    """CPU seconds so far: busy on the whole machine, stolen by the hypervisor, and used by this process
    and its reaped children, with a wall-clock stamp (two accounts give the shares in between)."""
    ticks = os.sysconf("SC_CLK_TCK")
    busy = steal = 0.0
    try:
        fields = [int(x) for x in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, stolen = (fields + [0] * 8)[:8]
        busy, steal = (user + nice + system + irq + softirq) / ticks, stolen / ticks
    except (OSError, ValueError, IndexError):
        pass
    own = os.times()
    return {"wall": time.monotonic(), "busy": busy, "steal": steal,
            "own": own.user + own.system + own.children_user + own.children_system}


def cpu_share(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """Average CPUs in use between two accounts: by this process tree, by everything else, and stolen."""
    wall = max(end["wall"] - start["wall"], 1e-9)
    own = end["own"] - start["own"]
    return {"seconds": round(wall, 1), "benchmark_cpus": round(own / wall, 2),
            "other_cpus": round(max(0.0, (end["busy"] - start["busy"]) - own) / wall, 2),
            "stolen_cpus": round((end["steal"] - start["steal"]) / wall, 2)}
