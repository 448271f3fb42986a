"""The ``grpc.aio`` channel and stub of an :class:`imagegen.AsyncClient` (written by hand, not generated)."""

from __future__ import annotations

import grpc
import grpc.aio

from imagegen.v1 import image_generation_service_pb2_grpc as service_grpc

__all__ = ["AsyncConnection"]


class AsyncConnection:
    """A ``grpc.aio`` channel opened on first use, so that it binds to the event loop that uses it.

    A client may be built outside any loop (at import, before ``asyncio.run``);
    its channel is created by the first call, inside the running loop. After
    :meth:`close`, the next call opens a new channel.
    """

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, object]]):
        self._target = target
        self._credentials = credentials
        self._options = options
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_grpc.ImageGenerationServiceAsyncStub | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel, opened now if it is not open."""
        if self._channel is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self._target, self._credentials, options=self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
        return self._channel

    @property
    def stub(self) -> service_grpc.ImageGenerationServiceAsyncStub:
        """The generated stub on :attr:`channel`."""
        if self._stub is None:
            self._stub = service_grpc.ImageGenerationServiceStub(self.channel)
        return self._stub

    async def close(self) -> None:
        """Close the channel if one is open; running calls are cancelled."""
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()
