"""Stubs generated from Salesforce's public ``pubsub_api.proto`` (forcedotcom/pub-sub-api,
commit 0ba4701, CC0). Do not edit the ``_pb2`` files; regenerate them from the repository root
with the dev extra installed (grpcio-tools 1.76.0 targets protobuf 6, which Dagster needs):

    .venv/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
        revorch/sources/salesforce/pubsub/pubsub_api.proto
"""
