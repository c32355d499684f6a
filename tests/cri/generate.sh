#!/usr/bin/env bash
# Regenerate tests/cri/api_pb2*.py from api.proto (needs grpcio-tools: pip install -e ".[dev]").
# The generated modules are committed: the tests need only grpcio and protobuf at run time.
set -euo pipefail
cd "$(dirname "$0")"
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. api.proto
sed -i -E 's/^import api_pb2 as/from . import api_pb2 as/' api_pb2_grpc.py
