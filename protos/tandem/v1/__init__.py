"""Tandem API v1. The *_pb2*.py modules here are generated from the .proto files by
`make setup` (grpc_tools.protoc); they are never committed or edited by hand."""
