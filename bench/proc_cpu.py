"""CPU time of a benchmark's own process tree, read from /proc (Linux)."""

from __future__ import annotations

import os


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and all its descendants (the Spark JVM, its Python workers).

    Live processes count their own user + system time, plus the time of
    children they have reaped; other engineers' processes are not counted.
    """
    parents, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    mine = {os.getpid()}
    grew = True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in mine} - mine
        grew = bool(found)
        mine |= found
    return sum(cpu[pid] for pid in mine)
