"""CPU time of a benchmark's own process tree, read from /proc (Linux)."""

from __future__ import annotations

import os


def tree_cpu_by_process() -> dict[str, float]:
    """CPU seconds of this process and all its descendants, by process kind.

    Kinds: ``"jvm"`` (the Spark JVM), ``"python workers"`` (PySpark's daemon
    and workers, the JVM's children) and ``"driver"`` (this process). Live
    processes count their own user + system time plus the time of children
    they have reaped; other engineers' processes are not counted.
    """
    parents, cpu, names = {}, {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                head, tail = fh.read().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()
        parents[int(entry)] = int(fields[1])
        names[int(entry)] = head.split("(", 1)[1]
        cpu[int(entry)] = sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    out = {"driver": cpu.get(os.getpid(), 0.0), "jvm": 0.0, "python workers": 0.0}
    frontier = {os.getpid()}
    kind = {os.getpid(): "driver"}
    while frontier:
        found = {pid for pid, parent in parents.items() if parent in frontier and pid not in kind}
        for pid in found:
            parent_kind = kind[parents[pid]]
            if parent_kind == "driver":
                kind[pid] = "jvm" if names[pid] == "java" else "driver"
            else:
                kind[pid] = "python workers" if parent_kind == "jvm" or names[pid] != "java" else parent_kind
            if pid != os.getpid():
                out[kind[pid]] += cpu[pid]
        frontier = found
    return out


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and all its descendants (the Spark JVM, its Python workers)."""
    return sum(tree_cpu_by_process().values())
