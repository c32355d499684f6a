"""Task events forwarded to containerd (`/tasks/create`, `/start`, `/exit`, `/delete`, `/oom`) over
ttrpc to `TTRPC_ADDRESS`, as containerd's own shims do. Publishing never blocks a task: an event is
stamped and queued, and one thread of the publisher's forwards the queue in order (containerd's runc
shim forwards its events from a queue too), so Create, Start and Delete answer without waiting for
containerd to take theirs (~2-5 ms a call on a busy machine); a failure to reach containerd is logged
and the event dropped. The shim `flush`es the queue before it exits."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from .api import events_pb2, forward_pb2, task_pb2
from .ttrpc import Client, RpcError

log = logging.getLogger("wasmctr.shim.events")


class Publisher:
    def __init__(self, ttrpc_address: str | None) -> None:
        self.client = Client(ttrpc_address) if ttrpc_address else None
        self._queue: collections.deque[forward_pb2.Envelope] = collections.deque()
        self._changed = threading.Condition()  # an envelope was queued, or the queue was emptied
        self._sending = False  # the forwarder holds an envelope it took from the queue
        self._forwarder: threading.Thread | None = None

    def publish(self, namespace: str, topic: str, event: Any) -> None:
        if self.client is None:
            return
        wrapped = any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString())
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        with self._changed:
            self._queue.append(forward_pb2.Envelope(timestamp=now, namespace=namespace, topic=topic, event=wrapped))
            if self._forwarder is None:  # started with the first event: a forked process starts its own
                self._forwarder = threading.Thread(target=self._forward, name="events", daemon=True)
                self._forwarder.start()
            self._changed.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every event published so far has been forwarded (or dropped); False if that took
        longer than `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue and not self._sending, timeout)

    def _forward(self) -> None:
        assert self.client is not None
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue))
                envelope = self._queue.popleft()
                self._sending = True
            try:
                self.client.call("containerd.services.events.ttrpc.v1.Events", "Forward",
                                 forward_pb2.ForwardRequest(envelope=envelope), empty_pb2.Empty, envelope.namespace)
            except (OSError, RpcError) as exc:
                log.warning("could not publish %s: %s", envelope.topic, exc)
            with self._changed:
                self._sending = False
                self._changed.notify_all()

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
