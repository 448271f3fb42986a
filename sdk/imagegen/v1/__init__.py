"""Generated protobuf and gRPC stubs for imagegen.v1 (do not edit)."""
