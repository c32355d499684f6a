"""Task events forwarded to containerd (`/tasks/create`, `/start`, `/exit`, `/delete`, `/oom`) over
ttrpc to `TTRPC_ADDRESS`, as containerd's own shims do. Publishing never blocks a task: a failure to
reach containerd is logged and dropped."""

from __future__ import annotations

import logging
import time
from typing import Any

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from .api import events_pb2, forward_pb2, task_pb2
from .ttrpc import Client, RpcError

log = logging.getLogger("wasmctr.shim.events")


class Publisher:
    def __init__(self, ttrpc_address: str | None) -> None:
        self.client = Client(ttrpc_address) if ttrpc_address else None

    def publish(self, namespace: str, topic: str, event: Any) -> None:
        if self.client is None:
            return
        wrapped = any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString())
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        envelope = forward_pb2.Envelope(timestamp=now, namespace=namespace, topic=topic, event=wrapped)
        try:
            self.client.call("containerd.services.events.ttrpc.v1.Events", "Forward",
                             forward_pb2.ForwardRequest(envelope=envelope), empty_pb2.Empty, namespace)
        except (OSError, RpcError) as exc:
            log.warning("could not publish %s: %s", topic, exc)

    def task_create(self, task: Any, rootfs: list[task_pb2.Mount]) -> None:
        self.publish(task.namespace, "/tasks/create", events_pb2.TaskCreate(
            container_id=task.id, bundle=str(task.bundle), rootfs=rootfs, pid=task.pid,
            io=events_pb2.TaskIO(stdin=task.stdin, stdout=task.stdout, stderr=task.stderr)))

    def task_start(self, task: Any) -> None:
        self.publish(task.namespace, "/tasks/start", events_pb2.TaskStart(container_id=task.id, pid=task.pid))

    def task_exit(self, task: Any) -> None:
        self.publish(task.namespace, "/tasks/exit", events_pb2.TaskExit(
            container_id=task.id, id=task.id, pid=task.pid, exit_status=task.exit_status,
            exited_at=timestamp(task.exited_at)))

    def task_oom(self, task: Any) -> None:
        self.publish(task.namespace, "/tasks/oom", events_pb2.TaskOOM(container_id=task.id))

    def task_delete(self, task: Any) -> None:
        self.publish(task.namespace, "/tasks/delete", events_pb2.TaskDelete(
            container_id=task.id, pid=task.pid, exit_status=task.exit_status, exited_at=timestamp(task.exited_at)))


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp; 0 means now."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int((seconds or time.time()) * 1e9))
    return ts
