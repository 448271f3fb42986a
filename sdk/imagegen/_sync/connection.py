"""The blocking channel and stub of an :class:`imagegen.Client` (written by hand, not generated)."""

from __future__ import annotations

import grpc

from imagegen.v1 import image_generation_service_pb2_grpc as service_grpc

__all__ = ["Connection"]


class Connection:
    """A blocking grpc channel, opened at construction and shared by every thread using the client.

    Opening it eagerly keeps the client thread-safe without a lock. After
    :meth:`close`, calls raise ``ValueError`` (grpc's closed-channel error).
    """

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, object]]):
        if credentials is not None:
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        #: The generated stub on :attr:`channel`.
        self.stub = service_grpc.ImageGenerationServiceStub(self.channel)

    def close(self) -> None:
        """Close the channel; running calls are cancelled."""
        self.channel.close()
