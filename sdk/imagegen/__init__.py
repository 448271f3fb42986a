"""imagegen: typed Python SDK for the imagegen gRPC image generation gateway."""
