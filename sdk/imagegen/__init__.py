"""imagegen: typed Python SDK for the imagegen gRPC image generation gateway.

Sync and async clients share one design::

    import imagegen

    with imagegen.Client("127.0.0.1:50051") as client:
        result = client.generate("a red fox in the snow", width=1024, height=1024, seed=7)
        result.save("fox.png")
        chat = client.conversation("a red fox", seed=7)
        chat.refine("make it night").save("fox-night.png")

    async with imagegen.AsyncClient("127.0.0.1:50051") as client:
        async for event in client.generate_stream("a red fox"):
            print(event)

Errors raise subclasses of :class:`ImagegenError` chosen by meaning
(:class:`RateLimitError`, :class:`ContentPolicyError`, ...). The generated
protocol stubs are in :mod:`imagegen.v1` for callers who want the raw messages.
"""

from imagegen._convert import GenerationKwargs
from imagegen._retry import ClientRetry
from imagegen.client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    MAX_MESSAGE_BYTES,
    AsyncClient,
    AsyncEventStream,
    Client,
    EventStream,
    tls_credentials,
)
from imagegen.conversation import AsyncConversation, Conversation
from imagegen.errors import (
    AuthenticationError,
    ContentBlockedError,
    ContentPolicyError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    GenerationError,
    ImagegenError,
    InternalError,
    InvalidRequestError,
    NoImageError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExhaustedError,
    QuotaViolation,
    RateLimitError,
    RequestCancelledError,
    UnavailableError,
    UnimplementedError,
    UpstreamAuthError,
    from_grpc_error,
)
from imagegen.types import (
    Accepted,
    AttemptFailed,
    AttemptStarted,
    Completed,
    GenerationResult,
    Heartbeat,
    Image,
    ImageInput,
    ModelFallback,
    ModelInfo,
    Part,
    Preview,
    StreamEvent,
    Turn,
    Usage,
)

#: The SDK's version.
__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "Accepted",
    "AsyncClient",
    "AsyncConversation",
    "AsyncEventStream",
    "AttemptFailed",
    "AttemptStarted",
    "AuthenticationError",
    "Client",
    "ClientRetry",
    "Completed",
    "ContentBlockedError",
    "ContentPolicyError",
    "Conversation",
    "DeadlineExceededError",
    "EventStream",
    "FailedPreconditionError",
    "FieldViolation",
    "GenerationError",
    "GenerationKwargs",
    "GenerationResult",
    "Heartbeat",
    "Image",
    "ImageInput",
    "ImagegenError",
    "InternalError",
    "InvalidRequestError",
    "ModelFallback",
    "ModelInfo",
    "NoImageError",
    "NotFoundError",
    "Part",
    "PermissionDeniedError",
    "Preview",
    "QuotaExhaustedError",
    "QuotaViolation",
    "RateLimitError",
    "RequestCancelledError",
    "StreamEvent",
    "Turn",
    "UnavailableError",
    "UnimplementedError",
    "UpstreamAuthError",
    "Usage",
    "__version__",
    "from_grpc_error",
    "tls_credentials",
]
