"""Reading a ``GenerateContentRequest`` the way Gemini does.

Gemini parses request JSON with proto3 rules: every field may be spelled in
camelCase or snake_case (the SDK itself mixes ``inlineData`` with
``mime_type``), unknown fields are rejected, bytes are base64 (standard or
URL-safe). Validation stops at the first problem, with Gemini's wording and
1-based positions where Gemini reports them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..imagetypes import SUPPORTED_INPUT_TYPES, sniff_mime_type
from ..models import ModelSpec
from . import errors
from .scenarios import strip_markers
from .signatures import image_signature, is_skip_sentinel, text_signature

_CAMEL_HUMP = re.compile(r"(?<!^)([A-Z])")
_SNAKE_HUMP = re.compile(r"_([a-z0-9])")

#: GenerateContentRequest fields (Gemini API v1beta proto).
REQUEST_FIELDS = frozenset(
    {
        "model",
        "contents",
        "tools",
        "toolConfig",
        "safetySettings",
        "systemInstruction",
        "generationConfig",
        "cachedContent",
    }
)
#: GenerationConfig fields of the Gemini API (Vertex-only ones are rejected there too).
GENERATION_CONFIG_FIELDS = frozenset(
    {
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "enableEnhancedCivicAnswers",
        "responseModalities",
        "speechConfig",
        "thinkingConfig",
        "imageConfig",
        "mediaResolution",
    }
)
#: ImageConfig on the Gemini API; outputMimeType and friends are Vertex-only.
IMAGE_CONFIG_FIELDS = frozenset({"aspectRatio", "imageSize", "personGeneration"})
THINKING_CONFIG_FIELDS = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
#: Part fields that count as the part's ``data`` oneof.
PART_DATA_FIELDS = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)
MODALITIES = frozenset({"MODALITY_UNSPECIFIED", "TEXT", "IMAGE", "AUDIO", "VIDEO"})
#: Input image types Gemini accepts (Vertex 3.1 Flash Image model page).
INPUT_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
_INT32_MAX = 2**31 - 1
_INT32_MIN = -(2**31)
#: Gemini's inline-data limit per request (base64 included), since Jan 2026.
MAX_REQUEST_BYTES = 100 * 1024 * 1024
#: Input tokens Gemini counts for one input image at default resolution.
TOKENS_PER_INPUT_IMAGE = 258


def snake(name: str) -> str:
    """``inlineData`` -> ``inline_data``."""
    return _CAMEL_HUMP.sub(r"_\1", name).lower()


def camel(name: str) -> str:
    """``inline_data`` -> ``inlineData`` (camelCase names pass through)."""
    return _SNAKE_HUMP.sub(lambda m: m.group(1).upper(), name)


def get_field(obj: Mapping[str, Any], name: str) -> Any:
    """``obj[name]`` under its camelCase or snake_case spelling, or None."""
    if name in obj:
        return obj[name]
    return obj.get(snake(name))


def _check_known(obj: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    unknown = [key for key in obj if camel(key) not in allowed]
    if unknown:
        raise errors.unknown_fields(path, unknown)


def _object(value: Any, path: str, type_name: str) -> Mapping[str, Any]:
    """``value`` as a JSON object, or Gemini's "Invalid value" 400."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise errors.invalid_value(path, type_name, value)
    return value


def decode_base64(text: str) -> bytes | None:
    """Proto3 JSON bytes: standard or URL-safe alphabet, padding optional."""
    normal = text.replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def looks_like_image(data: bytes) -> bool:
    """True when ``data`` starts like an image type Gemini accepts as input."""
    return sniff_mime_type(data) in SUPPORTED_INPUT_TYPES


def _bytes_field(value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise errors.invalid_value(path, "TYPE_BYTES", value)
    decoded = decode_base64(value)
    if decoded is None:
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise errors.invalid_argument(
            f"Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for \"{shown}\"",
            [{"field": path, "description": f'Base64 decoding failed for "{shown}"'}],
        )
    return decoded


def _int32(value: Any, path: str) -> int:
    # Proto3 JSON accepts integers as numbers or as decimal strings.
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"-?\d+", value)
    ):
        number = int(value)
    if number is None or not _INT32_MIN <= number <= _INT32_MAX:
        raise errors.invalid_value(path, "TYPE_INT32", value)
    return number


@dataclass(frozen=True, slots=True)
class GenerateCall:
    """A validated request: what the emulator renders from."""

    #: The user's text (markers removed), joined across user turns.
    prompt: str
    seed: int | None
    #: As requested, or "" when absent.
    aspect_ratio: str
    image_size: str
    modalities: frozenset[str]
    include_thoughts: bool
    #: SHA-256 hex digests of every inline (and file) image, in request order.
    image_digests: tuple[str, ...]
    #: Input token estimate for usageMetadata.
    text_tokens: int
    image_tokens: int


@dataclass(frozen=True, slots=True)
class _Part:
    content_index: int  # 1-based, as Gemini reports positions
    part_index: int
    role: str
    body: Mapping[str, Any]


def _iter_parts(contents: Any) -> Iterator[_Part]:
    if not isinstance(contents, list) or not contents:
        raise errors.invalid_argument("* GenerateContentRequest.contents: contents is not specified\n")
    for i, raw_content in enumerate(contents):
        content = _object(raw_content, f"contents[{i}]", "type.googleapis.com/google.ai.generativelanguage.Content")
        role = get_field(content, "role") or ""
        if role not in {"user", "model", ""}:
            raise errors.invalid_argument("Please use a valid role: user, model.")
        parts = get_field(content, "parts")
        if not isinstance(parts, list) or not parts:
            raise errors.invalid_argument(
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            )
        for j, raw_part in enumerate(parts):
            part = _object(
                raw_part, f"contents[{i}].parts[{j}]", "type.googleapis.com/google.ai.generativelanguage.Part"
            )
            if not any(get_field(part, name) is not None for name in PART_DATA_FIELDS):
                raise errors.invalid_argument(
                    f"* GenerateContentRequest.contents[{i}].parts[{j}].data: "
                    "required oneof field 'data' must have one initialized field\n"
                )
            yield _Part(i + 1, j + 1, role or "user", part)


def _inline_image(part: _Part) -> bytes | None:
    """Decoded image bytes of an ``inlineData`` part (validated), else None."""
    blob = get_field(part.body, "inlineData")
    if blob is None:
        return None
    path = f"contents[{part.content_index - 1}].parts[{part.part_index - 1}].inline_data"
    blob = _object(blob, path, "type.googleapis.com/google.ai.generativelanguage.Blob")
    mime = get_field(blob, "mimeType")
    data = _bytes_field(get_field(blob, "data") or "", f"{path}.data")
    if not isinstance(mime, str) or not mime:
        raise errors.invalid_argument(f"* GenerateContentRequest.{path}.mime_type: mime_type is not specified\n")
    if mime.lower() not in INPUT_IMAGE_TYPES:
        raise errors.invalid_argument(f"Unsupported MIME type: {mime}")
    if not looks_like_image(data):
        raise errors.invalid_argument(
            "Unable to process input image. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting"
        )
    return data


def _check_signature(part: _Part, image: bytes | None, *, first_visible: bool) -> None:
    """Gemini 3 image models: signed model parts must carry the signature we issued.

    Gemini signs every non-thought image and the first non-thought part of a
    model turn when it is text (gemini-api.md sections 3 and 5), and rejects a
    history where either comes back without its signature. ``first_visible``
    says this part is the first one of its model turn that is not a thought.
    """
    if part.role != "model" or get_field(part.body, "thought") is True:
        return
    raw = get_field(part.body, "thoughtSignature")
    text = get_field(part.body, "text")
    kind = "Image" if image is not None else "Text"
    if raw is None or raw == "":
        if image is not None or (first_visible and text is not None):
            raise errors.missing_signature(kind, part.content_index, part.part_index)
        return  # later text parts carry none
    path = f"contents[{part.content_index - 1}].parts[{part.part_index - 1}].thought_signature"
    signature = _bytes_field(raw, path)
    if is_skip_sentinel(raw, signature):
        return
    if image is not None:
        expected = image_signature(image)
    elif isinstance(text, str):
        expected = text_signature(text)
    else:
        return  # signatures on function calls etc. are not ours to judge
    if signature != expected:
        raise errors.corrupted_signature(kind, part.content_index, part.part_index)


def _modalities(value: Any, version: str) -> frozenset[str]:
    if value is None:
        return frozenset({"TEXT", "IMAGE"})
    path = "generation_config.response_modalities"
    if not isinstance(value, list):
        raise errors.invalid_value(path, "TYPE_ENUM", value)
    enum_type = f"type.googleapis.com/google.ai.generativelanguage.{version}.GenerationConfig.Modality"
    names: set[str] = set()
    for k, item in enumerate(value):
        if not isinstance(item, str) or item.upper() not in MODALITIES:
            raise errors.invalid_value(f"{path}[{k}]", enum_type, item)
        names.add(item.upper())
    names.discard("MODALITY_UNSPECIFIED")
    names = names or {"TEXT", "IMAGE"}
    unsupported = sorted(names - {"TEXT", "IMAGE"}) or ([] if "IMAGE" in names else ["TEXT"])
    if unsupported:
        raise errors.invalid_argument(
            "Model does not support the requested response modalities: " + ", ".join(m.lower() for m in unsupported)
        )
    return frozenset(names)


def _image_config(config: Mapping[str, Any], spec: ModelSpec) -> tuple[str, str]:
    path = "generation_config.image_config"
    _check_known(config, IMAGE_CONFIG_FIELDS, path)
    ratio = get_field(config, "aspectRatio") or ""
    size = get_field(config, "imageSize") or ""
    if not isinstance(ratio, str):
        raise errors.invalid_value(f"{path}.aspect_ratio", "TYPE_STRING", ratio)
    if not isinstance(size, str):
        raise errors.invalid_value(f"{path}.image_size", "TYPE_STRING", size)
    if ratio and ratio not in spec.aspect_ratios:
        raise errors.invalid_argument(
            "Aspect ratio is not enabled for this model.",
            [
                {
                    "field": f"{path}.aspect_ratio",
                    "description": f"Unsupported aspect ratio {ratio!r} for {spec.name}; "
                    f"supported: {', '.join(spec.aspect_ratios)}.",
                }
            ],
        )
    if size and not spec.image_sizes:
        raise errors.invalid_argument(
            "Image size is not enabled for this model.",
            [{"field": f"{path}.image_size", "description": f"{spec.name} has no image size tiers."}],
        )
    if size and size not in spec.image_sizes:
        hint = " Use an uppercase 'K'." if size.upper() in spec.image_sizes else ""
        raise errors.invalid_argument(
            f"Unsupported image size {size!r}.{hint}",
            [
                {
                    "field": f"{path}.image_size",
                    "description": f"Supported values for {spec.name}: {', '.join(spec.image_sizes)}.{hint}",
                }
            ],
        )
    return ratio, size


def parse_request(body: Any, spec: ModelSpec, version: str, *, check_signatures: bool = True) -> GenerateCall:
    """Validate a request body for ``spec``; raise :class:`ApiError` as Gemini would.

    ``check_signatures=False`` skips the thought-signature checks, which only
    generation enforces (``countTokens`` tokenizes any history).
    """
    if not isinstance(body, Mapping):
        raise errors.invalid_json("Root element must be a message.")
    _check_known(body, REQUEST_FIELDS, "")
    config = _object(
        get_field(body, "generationConfig"),
        "generation_config",
        "type.googleapis.com/google.ai.generativelanguage.GenerationConfig",
    )
    _check_known(config, GENERATION_CONFIG_FIELDS, "generation_config")
    image_config = _object(get_field(config, "imageConfig"), "generation_config.image_config", "ImageConfig")
    thinking = _object(get_field(config, "thinkingConfig"), "generation_config.thinking_config", "ThinkingConfig")
    _check_known(thinking, THINKING_CONFIG_FIELDS, "generation_config.thinking_config")
    seed_value = get_field(config, "seed")
    seed = None if seed_value is None else _int32(seed_value, "generation_config.seed")
    count = get_field(config, "candidateCount")
    if count is not None and _int32(count, "generation_config.candidate_count") > 1:
        raise errors.invalid_argument("Multiple candidates is not enabled for this model.")
    modalities = _modalities(get_field(config, "responseModalities"), version)
    ratio, size = _image_config(image_config, spec)
    _object(
        get_field(body, "systemInstruction"),
        "system_instruction",
        "type.googleapis.com/google.ai.generativelanguage.Content",
    )

    prompt_lines: list[str] = []
    digests: list[str] = []
    text_chars = 0
    seen_visible: set[int] = set()  # contents that already had a non-thought part
    for part in _iter_parts(get_field(body, "contents")):
        image = _inline_image(part)
        if check_signatures and spec.requires_thought_signatures:
            _check_signature(part, image, first_visible=part.content_index not in seen_visible)
        if get_field(part.body, "thought") is not True:
            seen_visible.add(part.content_index)
        if image is not None:
            digests.append(hashlib.sha256(image).hexdigest())
        file_data = get_field(part.body, "fileData")
        if isinstance(file_data, Mapping):
            uri = str(get_field(file_data, "fileUri") or "")
            digests.append(hashlib.sha256(uri.encode()).hexdigest())
        text = get_field(part.body, "text")
        if text is not None and not isinstance(text, str):
            raise errors.invalid_value(
                f"contents[{part.content_index - 1}].parts[{part.part_index - 1}].text", "TYPE_STRING", text
            )
        if text:
            text_chars += len(text)
            if part.role == "user" and get_field(part.body, "thought") is not True:
                prompt_lines.append(strip_markers(text))
    return GenerateCall(
        prompt="\n".join(line for line in prompt_lines if line),
        seed=seed,
        aspect_ratio=ratio,
        image_size=size,
        modalities=modalities,
        include_thoughts=get_field(thinking, "includeThoughts") is True,
        image_digests=tuple(digests),
        text_tokens=max(1, text_chars // 4),
        image_tokens=TOKENS_PER_INPUT_IMAGE * len(digests),
    )


#: CountTokensRequest fields (Gemini API v1beta proto).
COUNT_TOKENS_FIELDS = frozenset({"contents", "generateContentRequest"})


def parse_count_tokens(body: Any, spec: ModelSpec, version: str) -> GenerateCall:
    """Validate a ``countTokens`` body: ``contents``, or a whole ``generateContentRequest``.

    When ``generateContentRequest`` is set, ``contents`` is ignored, as the
    API reference says; either is validated like a generation request.
    """
    if not isinstance(body, Mapping):
        raise errors.invalid_json("Root element must be a message.")
    _check_known(body, COUNT_TOKENS_FIELDS, "")
    request = get_field(body, "generateContentRequest")
    if request is None:
        request = {"contents": get_field(body, "contents")}
    elif not isinstance(request, Mapping):
        raise errors.invalid_value(
            "generate_content_request",
            "type.googleapis.com/google.ai.generativelanguage.GenerateContentRequest",
            request,
        )
    return parse_request(request, spec, version, check_signatures=False)


def iter_texts(body: Any) -> Iterator[tuple[str, str]]:
    """Every ``(field path, text)`` in a (possibly invalid) request body, newest turn first.

    Used to find a scenario marker before validation, so even a request that
    fails validation is counted under its scenario; the newest turn wins
    because refine histories repeat older prompts (and their markers). Paths
    are Gemini's snake_case field paths, e.g. ``contents[2].parts[0].text``.
    """
    if not isinstance(body, Mapping):
        return
    contents = get_field(body, "contents")
    blocks: list[tuple[str, Any]] = []
    if isinstance(contents, list):
        blocks = [(f"contents[{i}]", content) for i, content in reversed(list(enumerate(contents)))]
    blocks.append(("system_instruction", get_field(body, "systemInstruction")))
    for where, content in blocks:
        parts = get_field(content, "parts") if isinstance(content, Mapping) else None
        for j, part in enumerate(parts if isinstance(parts, list) else []):
            text = get_field(part, "text") if isinstance(part, Mapping) else None
            if isinstance(text, str):
                yield f"{where}.parts[{j}].text", text


def check_size(length: int) -> None:
    """Gemini's 400 for a request over the inline-data limit."""
    if length > MAX_REQUEST_BYTES:
        raise errors.payload_too_large(MAX_REQUEST_BYTES)
