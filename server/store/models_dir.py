"""A models directory: every GGUF file in one folder served under its stem, split files as one model."""

from __future__ import annotations

import contextlib
import logging
import re
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# llama.cpp's gguf-split names its parts `NAME-00001-of-00003.gguf` and loads the model from the first.
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})$")


@dataclass(frozen=True)
class SplitPart:
    """Where one file sits in a split model: its stem without the suffix, its 1-based index and the count."""

    stem: str
    index: int
    count: int


def split_part(filename: str) -> SplitPart | None:
    """The split suffix of a `.gguf` file name, or None for a file that is a whole model."""
    match = _SPLIT.match(filename.removesuffix(".gguf").removesuffix(".GGUF"))
    if match is None or int(match["count"]) < 1 or not 1 <= int(match["index"]) <= int(match["count"]):
        return None
    return SplitPart(match["stem"], int(match["index"]), int(match["count"]))


def is_gguf(filename: str) -> bool:
    return filename.lower().endswith(".gguf")


def is_projector(filename: str) -> bool:
    """A multimodal projector (`mmproj-*.gguf`): needed beside a vision model, never a model of its own."""
    return "mmproj" in filename.lower()


def model_stem(filename: str) -> str:
    """The name a GGUF file is served under: its stem, less a split suffix."""
    part = split_part(filename)
    return part.stem if part is not None else filename[: -len(".gguf")]


def files_size(files: tuple[Path, ...]) -> int:
    """Bytes on disk of a model's files; a file gone since it was found counts as 0."""
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += f.stat().st_size
    return total


def _regular_file(path: Path) -> bool:
    """A regular file, through a symlink too; a link to a directory, device or nothing is not."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def scan_models_dir(directory: Path) -> dict[str, tuple[Path, ...]]:
    """Every model in `directory` (not its subfolders): name → its files, the one llama.cpp opens first.

    Sorted by name; a split set missing a part is skipped (logged).
    """
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        log.warning("models dir %s cannot be read: %s", directory, exc.strerror or exc)
        return {}
    whole: dict[str, Path] = {}
    parts: dict[str, dict[int, Path]] = {}
    counts: dict[str, int] = {}
    for path in entries:
        if not is_gguf(path.name) or is_projector(path.name) or not _regular_file(path):
            continue
        part = split_part(path.name)
        if part is None:
            whole[model_stem(path.name)] = path
            continue
        parts.setdefault(part.stem, {})[part.index] = path
        counts[part.stem] = part.count
    found: dict[str, tuple[Path, ...]] = {name: (path,) for name, path in whole.items()}
    for stem, by_index in parts.items():
        if stem in whole:
            log.warning("models dir %s: %s.gguf and split files %s-*-of-* both exist; serving %s.gguf",
                        directory, stem, stem, stem)
            continue
        if sorted(by_index) != list(range(1, counts[stem] + 1)):
            log.warning("models dir %s: split model %s has %d of its %d parts; skipped",
                        directory, stem, len(by_index), counts[stem])
            continue
        found[stem] = tuple(by_index[i] for i in sorted(by_index))
    return dict(sorted(found.items()))


_MMPROJ = re.compile(r"[-_.]?mmproj[-_.]?", re.IGNORECASE)
# A quant at the end of a file's stem (Q8_0, Q4_K_M, IQ3_XXS, F16, BF16...): a projector is often published in
# another precision than the model it belongs to (mmproj-NAME-f16.gguf beside NAME-Q4_K_M.gguf).
_QUANT = re.compile(r"[-_.](?:UD-)?(?:I?Q\d\w*|B?F16|F32)$", re.IGNORECASE)


def pair_projectors(models: list[str], projectors: list[Path]) -> dict[str, Path]:
    """Which model each projector (`mmproj-*.gguf`) belongs to, by name: `mmproj-NAME.gguf`, `NAME-mmproj.gguf` or
    `NAME.mmproj.gguf` pair with model NAME, or, quants aside, with the one model of that name; one projector
    beside one model pairs with it. Anything else is left unpaired (logged): a projector made for another model
    would fail its load."""
    paired: dict[str, Path] = {}
    for projector in projectors:
        name = _MMPROJ.sub("", model_stem(projector.name), count=1)
        chosen = [m for m in models if m.lower() == name.lower()]
        if not chosen:
            base = _QUANT.sub("", name).lower()
            chosen = [m for m in models if base and _QUANT.sub("", m).lower() == base]
        if not chosen and len(models) == 1 and len(projectors) == 1:
            chosen = models
        if len(chosen) != 1 or chosen[0] in paired:
            log.info("projector %s pairs with no single model (by name); name it mmproj-MODEL.gguf or set mmproj "
                     "in models.toml", projector)
            continue
        paired[chosen[0]] = projector
    return paired


def scan_projectors(directory: Path, models: list[str]) -> dict[str, Path]:
    """The projectors in `directory` paired with its models (pair_projectors): model name → projector file."""
    try:
        projectors = sorted(p for p in directory.iterdir() if is_gguf(p.name) and is_projector(p.name) and _regular_file(p))
    except OSError:
        return {}
    return pair_projectors(models, projectors)
