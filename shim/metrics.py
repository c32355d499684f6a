"""A container's resource usage for the task service's Stats, read from /proc.

A wasm container here is one process forked from the shim, not a cgroup, so the figures are that
process's: CPU time from /proc/PID/stat, and memory as its proportional set size (PSS) from
/proc/PID/smaps_rollup. PSS, not RSS: the engine and the compiled guest are pages shared with the shim
and its other containers, and RSS would count them in full for every container. They are reported in
containerd's cgroup v2 message, which `ctr task metrics` and the CRI plugin (kubelet, `kubectl top`)
read for runc's containers too.
"""

from __future__ import annotations

import os

from .api import metrics_pb2

_TICKS = os.sysconf("SC_CLK_TCK")


def metrics(pid: int, memory_limit: int) -> metrics_pb2.Metrics:
    """Raises OSError when the process is gone."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
    user_usec, system_usec = (int(ticks) * 1_000_000 // _TICKS for ticks in fields[11:13])  # utime, stime
    sizes = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Pss", "Pss_Anon", "Pss_File"):
                sizes[name] = int(rest.split()[0]) * 1024
    return metrics_pb2.Metrics(
        pids=metrics_pb2.PidsStat(current=1),
        cpu=metrics_pb2.CPUStat(usage_usec=user_usec + system_usec, user_usec=user_usec,
                                system_usec=system_usec),
        memory=metrics_pb2.MemoryStat(usage=sizes.get("Pss", 0), anon=sizes.get("Pss_Anon", 0),
                                      file=sizes.get("Pss_File", 0), usage_limit=memory_limit))
