"""The catalogue of Gemini image models: aspect ratios, size tiers, pixel sizes.

One table serves the validator, the width x height mapping, the emulator (which
renders at these pixel sizes) and ListModels. Pixel sizes are Gemini's
published ones (see ``docs/gemini-api.md`` in the shared brief).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Gemini 2.5 Flash Image: one ~1 MP size per ratio, no size tiers.
_FLASH_25_PIXELS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}

#: Gemini 3 image models at the 1K tier; 2K doubles each side, 4K quadruples.
_GEMINI_3_1K_PIXELS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}

#: Extra ratios only 3.1 Flash Image supports (1K tier).
_FLASH_31_EXTRA_1K: dict[str, tuple[int, int]] = {
    "1:4": (512, 2048),
    "4:1": (2048, 512),
    "1:8": (384, 3072),
    "8:1": (3072, 384),
}

_TIER_SCALE: dict[str, float] = {"512": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0}

#: Output tokens Gemini bills per image, by size tier (3.1 Flash figures).
TOKENS_PER_IMAGE: dict[str, int] = {"": 1290, "512": 747, "1K": 1120, "2K": 1680, "4K": 2520}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What one upstream model accepts."""

    name: str
    base_pixels: dict[str, tuple[int, int]]
    image_sizes: tuple[str, ...] = ()
    default_image_size: str = ""
    max_input_images: int = 14
    requires_thought_signatures: bool = False
    aliases: tuple[str, ...] = field(default=())

    @property
    def aspect_ratios(self) -> tuple[str, ...]:
        """Supported aspect ratios, in the table's order."""
        return tuple(self.base_pixels)

    def pixel_size(self, aspect_ratio: str, image_size: str = "") -> tuple[int, int]:
        """The pixel size Gemini renders for this ratio and tier."""
        width, height = self.base_pixels[aspect_ratio]
        if not self.image_sizes:
            return width, height
        tier = image_size or self.default_image_size
        if tier == "512" and aspect_ratio == "1:1":
            return 512, 512
        scale = _TIER_SCALE[tier]
        return round(width * scale), round(height * scale)

    def nearest(self, width: int, height: int) -> tuple[str, str]:
        """Map a requested pixel size to the closest (aspect ratio, size tier).

        The ratio is chosen by log-distance of width/height, so 1920x1080 picks
        16:9; the tier is the smallest whose long side covers the request.
        """
        target = math.log(width / height)
        ratio = min(
            self.aspect_ratios,
            key=lambda r: abs(math.log(self.base_pixels[r][0] / self.base_pixels[r][1]) - target),
        )
        if not self.image_sizes:
            return ratio, ""
        want = max(width, height)
        for tier in self.image_sizes:
            if max(self.pixel_size(ratio, tier)) >= want:
                return ratio, tier
        return ratio, self.image_sizes[-1]


def _catalogue() -> tuple[ModelSpec, ...]:
    g3_pro = {**_GEMINI_3_1K_PIXELS}
    g31_flash = {**_GEMINI_3_1K_PIXELS, **_FLASH_31_EXTRA_1K}
    return (
        ModelSpec(
            name="gemini-3.1-flash-image",
            base_pixels=g31_flash,
            image_sizes=("512", "1K", "2K", "4K"),
            default_image_size="1K",
            requires_thought_signatures=True,
            aliases=("gemini-3.1-flash-image-preview",),
        ),
        ModelSpec(
            name="gemini-3-pro-image",
            base_pixels=g3_pro,
            image_sizes=("1K", "2K", "4K"),
            default_image_size="1K",
            requires_thought_signatures=True,
            aliases=("gemini-3-pro-image-preview",),
        ),
        ModelSpec(
            name="gemini-3.1-flash-lite-image",
            base_pixels={"1:1": (1024, 1024)} | {k: v for k, v in _GEMINI_3_1K_PIXELS.items() if k != "1:1"},
            image_sizes=("1K",),
            default_image_size="1K",
            requires_thought_signatures=True,
        ),
        ModelSpec(
            name="gemini-2.5-flash-image",
            base_pixels=_FLASH_25_PIXELS,
        ),
    )


#: Every model the gateway knows, GA ids first. Immutable.
MODELS: tuple[ModelSpec, ...] = _catalogue()

DEFAULT_MODEL = "gemini-3.1-flash-image"


def find_model(name: str) -> ModelSpec | None:
    """Look a model up by id or preview alias; ``models/`` prefixes are ignored."""
    bare = name.removeprefix("models/")
    for spec in MODELS:
        if bare == spec.name or bare in spec.aliases:
            return spec
    return None
