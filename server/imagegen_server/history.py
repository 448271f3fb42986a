"""A Refine history as validation sees it: model turns passed back as returned, their final image's bytes put back.

``Generation.model_turn`` sends the final image's part without its bytes (they travel once, in
``Generation.image``); the part names its generation in ``image_generation_id``, and a Refine request
carries that image once, in ``history_images[generation_id]`` (see the protos). This module copies the
bytes into the parts that refer to them, so validation and translation see ordinary turns. A reference
with no entry stays empty, and validation names the missing key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from imagegen.v1 import image_pb2

__all__ = ["with_history_images"]


def _refers(part: image_pb2.Part) -> bool:
    return part.WhichOneof("data") == "image" and not part.image.data and bool(part.image_generation_id)


def with_history_images(
    history: Sequence[image_pb2.Turn], images: Mapping[str, image_pb2.Image]
) -> Sequence[image_pb2.Turn]:
    """``history`` with each referring part's ``image.data`` taken from ``images``; unchanged turns are not copied."""
    if not images:
        return history
    out: list[image_pb2.Turn] = []
    for turn in history:
        if not any(_refers(p) and p.image_generation_id in images for p in turn.parts):
            out.append(turn)
            continue
        filled = image_pb2.Turn()
        filled.CopyFrom(turn)
        for part in filled.parts:
            image = images.get(part.image_generation_id) if _refers(part) else None
            if image is not None:
                part.image.data = image.data
                part.image.mime_type = part.image.mime_type or image.mime_type
        out.append(filled)
    return out
