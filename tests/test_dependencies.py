"""The dependencies as declared: each has a range, and the range's lower end works.

`./run-tests` runs this file again, with the CLI, store, registry and run tests, in a second venv whose
dependencies are the lowest versions pyproject.toml allows (`tests/lower_bounds.py`), so a range that
admits a version the code cannot use fails CI instead of a user's install.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from datetime import UTC, datetime

from conftest import REPO
from google.protobuf import any_pb2, timestamp_pb2
from lower_bounds import lowest


def test_every_dependency_has_a_tested_lower_and_an_upper_bound() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in declared:
        assert re.search(r">=[0-9]", requirement) and re.search(r",<[0-9]", requirement), requirement
    assert lowest()["wasmtime"] == "50.0.1" and set(lowest()) == {re.split(r"[<>=]", r)[0] for r in declared}


def test_the_shim_protocol_generated_code_loads_and_round_trips_on_this_protobuf() -> None:
    """protoc's output checks the runtime's version when it is imported: a protobuf outside the range
    refuses shim/api here, as it would refuse the shim at its first container."""
    for name in ("events", "forward", "metrics", "shim", "task", "ttrpc"):
        module = importlib.import_module(f"wasmctr_node.api.{name}_pb2")
        for message in module.DESCRIPTOR.message_types_by_name:
            cls = getattr(module, message)
            assert cls.FromString(cls().SerializeToString()) == cls()
    from wasmctr_node.api import events_pb2, forward_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime(2026, 1, 2, tzinfo=UTC))
    exited = events_pb2.TaskExit(container_id="c", id="c", pid=7, exit_status=134, exited_at=stamp)
    wrapped = any_pb2.Any()
    wrapped.Pack(exited)
    envelope = forward_pb2.Envelope(timestamp=stamp, namespace="k8s.io", topic="/tasks/exit", event=wrapped)
    again = forward_pb2.Envelope.FromString(envelope.SerializeToString())
    unpacked = events_pb2.TaskExit()
    assert again.event.Unpack(unpacked) and unpacked == exited
    assert again.event.type_url == "type.googleapis.com/containerd.events.TaskExit"
