"""A container's resource usage for the task service's Stats: from its cgroup, else from /proc.

A container with a cgroup (every one containerd or Kubernetes creates names `linux.cgroupsPath`) is
measured there, as runc's containers are: the kernel's CPU time, the memory charged to it (the pages
it touched, not those it shares with the shim and its other guests), its processes. Without one, a
wasm container is one process forked from the shim, so the figures are that process's: CPU time from
/proc/PID/stat, and memory as its proportional set size (PSS) from /proc/PID/smaps_rollup — PSS, not
RSS, which would count the shared engine and code in full for every container. Either way they are
reported in containerd's cgroup v2 message, which `ctr task metrics` and the CRI plugin (kubelet,
`kubectl top`) read.
"""

from __future__ import annotations

import os

from .api import metrics_pb2

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .cgroups import Cgroup

_TICKS = os.sysconf("SC_CLK_TCK")


def metrics(pid: int, memory_limit: int, cgroup: Cgroup | None = None) -> metrics_pb2.Metrics:
    """Raises OSError when the process (or its cgroup) is gone."""
    if cgroup is not None:
        cpu_usec, memory, limit, processes = cgroup.usage()
        return metrics_pb2.Metrics(pids=metrics_pb2.PidsStat(current=processes, limit=0),
                                   cpu=metrics_pb2.CPUStat(usage_usec=cpu_usec),
                                   memory=metrics_pb2.MemoryStat(usage=memory, usage_limit=limit or memory_limit))
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
