#!/usr/bin/env bash
# Regenerate shim/api/*_pb2.py from shim/proto/*.proto (needs grpcio-tools: pip install -e ".[dev]").
# The generated modules are committed, so running the shim needs only the protobuf runtime.
set -euo pipefail
cd "$(dirname "$0")"
python -m grpc_tools.protoc -I. --python_out=../api --pyi_out=../api ttrpc.proto task.proto events.proto forward.proto shim.proto metrics.proto containers.proto images.proto content.proto
# protoc emits absolute imports between generated modules; make them package-relative.
sed -i -E 's/^import (task_pb2|ttrpc_pb2|events_pb2|forward_pb2|shim_pb2|metrics_pb2|containers_pb2|images_pb2|content_pb2) as/from . import \1 as/' ../api/*_pb2.py ../api/*_pb2.pyi
