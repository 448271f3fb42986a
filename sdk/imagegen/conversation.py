"""Multi-turn image editing without handling thought signatures.

A :class:`Conversation` (sync) or :class:`AsyncConversation` keeps the history
the server needs for ``Refine``: each user turn (prompt and input images) and
each model turn exactly as the server returned it, thought signatures byte for
byte. Example::

    with imagegen.Client() as client:
        chat = client.conversation("a red fox in the snow", seed=7)
        chat.refine("make it night")
        chat.refine("add a full moon").save("fox-moon.png")
        open("fox.json", "w").write(chat.to_json())       # resume later with Conversation.from_json

Model and size options given when the conversation starts are reused by every
turn unless a turn passes its own. :class:`AsyncConversation` is written once in
``imagegen/_async``; :class:`Conversation` is generated from it (see :mod:`imagegen.client`).
"""

from __future__ import annotations

from imagegen._async.conversation import AsyncConversation, AsyncGenerationClient
from imagegen._conversation_state import FORMAT
from imagegen._sync.conversation import Conversation, GenerationClient

__all__ = ["FORMAT", "AsyncConversation", "AsyncGenerationClient", "Conversation", "GenerationClient"]
