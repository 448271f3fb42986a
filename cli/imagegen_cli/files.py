"""Where the CLI writes: default image names, conversation sidecars, preview files."""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Appended to an image's file name for its conversation sidecar.
SIDECAR_SUFFIX = ".imagegen.json"


def sidecar_path(image_path: str | os.PathLike[str]) -> Path:
    """Where the conversation sidecar of ``image_path`` lives: ``fox.png`` -> ``fox.png.imagegen.json``."""
    path = Path(image_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def next_free(path: Path) -> Path:
    """``path`` if free, else ``stem-2.ext``, ``stem-3.ext``... (sidecars count as taken)."""
    if not path.exists() and not sidecar_path(path).exists():
        return path
    match = re.fullmatch(r"(.*)-(\d+)", path.stem)
    stem, n = (match.group(1), int(match.group(2))) if match else (path.stem, 1)
    while True:
        n += 1
        candidate = path.with_name(f"{stem}-{n}{path.suffix}")
        if not candidate.exists() and not sidecar_path(candidate).exists():
            return candidate


def generate_output(prompt: str) -> Path:
    """The default output of ``imagegen generate PROMPT``: the prompt as a slug, ``a-red-fox.png``."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].strip("-") or "image"
    return next_free(Path(f"{slug}.png"))


def refine_output(source: str | os.PathLike[str]) -> Path:
    """The default output of ``imagegen refine fox.png``: ``fox-2.png`` (``fox-3.png`` after ``fox-2.png``...)."""
    path = Path(source)
    match = re.fullmatch(r"(.*)-(\d+)", path.stem)
    stem, n = (match.group(1), int(match.group(2))) if match else (path.stem, 1)
    return next_free(path.with_name(f"{stem}-{n + 1}{path.suffix or '.png'}"))


def preview_path(output: Path, index: int) -> Path:
    """Where preview ``index`` of ``output`` is saved: ``fox.preview-1.png``."""
    return output.with_name(f"{output.stem}.preview-{index}{output.suffix or '.png'}")
