"""The Hugging Face Hub: `OWNER/REPO[:QUANT]` names, which GGUF file a name means, and its download.

The one module that talks to the Hub, through `huggingface_hub`: its cache layout, resumed downloads,
`HF_TOKEN`, `HF_ENDPOINT`, `HF_HUB_CACHE`/`HF_HOME` and offline mode (`HF_HUB_OFFLINE=1`) all come with it.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (  # type: ignore[attr-defined]  # HTTPError: re-exported, not in __all__
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HTTPError,  # huggingface_hub 2.4+ sends its requests through httpx2, whose errors reach here unconverted
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name

from ..engine.errors import ModelFileError
from ..engine.gguf_header import GGUFLayoutError, check_gguf_layout
from ..engine.model_dims import check_model_file
from ..errors import ConfigError
from ..settings import DEFAULT_PULL_TIMEOUT_SECONDS
from .download_limits import DownloadLimits, DownloadRefused
from .models_dir import is_gguf, is_projector, model_stem, split_part
from .progress import LoggedProgress, ProgressReport, reporting

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
DEFAULT_QUANT = "Q4_K_M"

# The Hub's own rule for a repo id (alphanumerics, '-', '_', '.'; at most 96 each side), then a quant label.
_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?"
_REF = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?::(?P<quant>[\w.-]{{1,64}}))?$")
# llama.cpp's quantisation names as GGUF files spell them: Q4_K_M, IQ2_XXS, Q8_0, BF16, UD-Q4_K_XL, MXFP4...
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]+)*|TQ\d_\d|B?F16|F32|MXFP4(?:_MOE)?))(?![A-Za-z0-9])",
    re.IGNORECASE,
)


class HubError(ConfigError):
    """A model name the Hub cannot answer: a bad name, no such repo or quant, no network and no cached copy."""


class HubNotFoundError(HubError):
    """The Hub answered, and has no such model: no such repo, no GGUF file in it, or not the quant asked."""


class PullCancelled(HubError):
    """The download was stopped because whoever asked for it went away (the client of a server's pull)."""



@dataclass(frozen=True)
class ModelRef:
    """A model named on the Hub: a repository and, optionally, the quantisation to pick in it."""

    repo: str
    quant: str | None = None

    @property
    def name(self) -> str:
        """The name as the user wrote it, without `hf:`: the model id clients send."""
        return f"{self.repo}:{self.quant}" if self.quant else self.repo


def parse_ref(text: str) -> ModelRef:
    """`OWNER/REPO`, `OWNER/REPO:QUANT`, each with an optional `hf:` in front."""
    match = _REF.match(text.removeprefix(HF_PREFIX))
    if match is None or ".." in match["repo"] or "--" in match["repo"]:
        raise HubError(f"{text!r} is not a Hugging Face model name: expected OWNER/REPO or OWNER/REPO:QUANT "
                       "(e.g. bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M)")
    return ModelRef(match["repo"], match["quant"])


def quant_of(filename: str) -> str | None:
    """The quantisation a GGUF file name states (`model.Q4_K_M.gguf` → `Q4_K_M`), as written; None if none."""
    found = _QUANT.findall(model_stem(filename.rsplit("/", 1)[-1]))
    return found[-1] if found else None


@dataclass(frozen=True)
class GgufChoice:
    """One model in a repo: its file, or all the parts of a split model in order, and their total size."""

    files: tuple[str, ...]
    size: int | None

    @property
    def quant(self) -> str | None:
        return quant_of(self.files[0])


def group_ggufs(files: Iterable[tuple[str, int | None]]) -> list[GgufChoice]:
    """The models among a repo's (path, size) files: projectors left out, split parts joined, partial sets dropped."""
    whole: list[GgufChoice] = []
    split: dict[str, dict[int, tuple[str, int | None]]] = {}
    counts: dict[str, int] = {}
    for path, size in files:
        base = path.rsplit("/", 1)[-1]
        if not is_gguf(base) or is_projector(base):
            continue
        part = split_part(base)
        if part is None:
            whole.append(GgufChoice((path,), size))
            continue
        key = path[: len(path) - len(base)] + part.stem
        split.setdefault(key, {})[part.index] = (path, size)
        counts[key] = part.count
    for key, parts in split.items():
        if sorted(parts) == list(range(1, counts[key] + 1)):
            sizes = [parts[i][1] for i in sorted(parts)]
            total = None if None in sizes else sum(s for s in sizes if s is not None)
            whole.append(GgufChoice(tuple(parts[i][0] for i in sorted(parts)), total))
    return sorted(whole, key=lambda c: c.files)


def pick_projector(files: Iterable[str], model_file: str) -> str | None:
    """The vision projector (`mmproj*.gguf`) beside `model_file` in a repo, as `llama-server -hf` fetches one: of the
    model's quant when there is one, else F16, else the first by name; None for a text-only repo."""
    folder = model_file[: len(model_file) - len(model_file.rsplit("/", 1)[-1])]
    found = sorted(f for f in files if f.startswith(folder) and "/" not in f[len(folder):]
                   and is_gguf(f) and is_projector(f))
    quant = (quant_of(model_file.rsplit("/", 1)[-1]) or "").upper()
    for wanted in (quant, "F16"):
        matching = [f for f in found if wanted and wanted in f.upper()]
        if matching:
            return matching[0]
    return found[0] if found else None


def pick(choices: list[GgufChoice], ref: ModelRef, where: str) -> GgufChoice:
    """The file `ref` names among `choices`: its quant (any case); without one, Q4_K_M, else the smallest."""
    if not choices:
        raise HubNotFoundError(f"{where} has no GGUF model files")
    wanted = (ref.quant or DEFAULT_QUANT).upper()
    # Unsloth's "dynamic" quants (UD-Q4_K_XL) answer to their plain name too.
    matching = [c for c in choices if wanted in {(c.quant or "").upper(), (c.quant or "").upper().removeprefix("UD-")}]
    if matching:
        return matching[0]
    if ref.quant is not None:
        quants = sorted({c.quant or model_stem(c.files[0].rsplit("/", 1)[-1]) for c in choices}, key=str.upper)
        raise HubNotFoundError(f"{where} has no {ref.quant} file; its quantisations: {', '.join(quants)}")
    return min(choices, key=lambda c: (c.size is None, c.size or 0, c.files))


@dataclass(frozen=True)
class PulledFiles:
    """A model in the local cache: what it was asked as, the commit, its repo paths and its files on disk.

    llama.cpp loads `paths[0]`, the first part of a split model.
    """

    ref: ModelRef
    commit: str
    files: tuple[str, ...]  # the model's, then its vision projector's when the repo has one (pick_projector)
    paths: tuple[Path, ...]


Progress = Literal["bar", "log"]


class Hub:
    """Looks models up on the Hub and in its cache, and downloads them into that cache.

    Every argument left None takes huggingface_hub's own setting (HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE).
    `timeout` bounds one `fetch` (listing and downloads): past it the download stops with a HubError.
    `report`, when given, hears each file's progress (and the progress is logged, never drawn).
    """

    def __init__(self, *, endpoint: str | None = None, cache_dir: Path | None = None, offline: bool | None = None,
                 progress: Progress = "bar", timeout: float = DEFAULT_PULL_TIMEOUT_SECONDS,
                 report: ProgressReport | None = None) -> None:
        self.timeout = timeout
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.cache_dir = Path(cache_dir or constants.HF_HUB_CACHE).expanduser()
        self.offline = constants.is_offline_mode() if offline is None else offline
        self._tqdm = LoggedProgress if progress == "log" else None
        self._report = report
        self._api = HfApi(endpoint=self.endpoint)

    def fetch(self, ref: ModelRef, *, prefer_cache: bool = False) -> PulledFiles:
        """The files of `ref`, downloaded unless already cached.

        `prefer_cache`: a cached copy of the asked quant (or of Q4_K_M when none is asked) is used without asking
        the Hub, as a models.toml path is on every start. Offline, or with the Hub out of reach, any cached file
        that fits the name serves.
        """
        if prefer_cache or self.offline:
            cached = self.cached(ref, exact=not self.offline)
            if cached is not None:
                return self._checked(cached)
        if self.offline:
            raise HubError(f"{ref.name}: not in the Hugging Face cache ({self.cache_dir}) and offline mode is on "
                           "(HF_HUB_OFFLINE): pull it once while online")
        try:
            with DownloadLimits(self.timeout).scope() as limits:
                choices, sizes = self._remote_choices(ref.repo)
                choice = pick(choices, ref, f"{ref.repo} on {self.endpoint}")
                projector = pick_projector(sizes, choice.files[0])
                files = choice.files + ((projector,) if projector else ())
                paths = tuple(Path(self._download(ref.repo, f, sizes[f], limits)) for f in files)
        except _Unreachable as exc:
            cached = self.cached(ref, exact=False)
            if cached is None:
                raise HubError(f"{ref.name}: cannot reach the Hub at {self.endpoint} ({exc}) and the model is "
                               f"not in the Hugging Face cache ({self.cache_dir})") from None
            log.warning("%s: the Hub is out of reach (%s); using the cached %s", ref.name, exc, cached.paths[0])
            return self._checked(cached)
        return self._checked(PulledFiles(ref, _commit_of(paths[0], choice.files[0]), files, paths))

    def _checked(self, files: PulledFiles) -> PulledFiles:
        """`files` if they hold a GGUF model whose header passes the bounded walk; else removed from the cache.

        What a Hub serves as `.gguf` may be anything (an HTML error page, a header that lies): never registered.
        """
        try:
            check_model_file(files.paths[0])
            for path in files.paths[1:]:  # a split model's other parts: each one's own layout
                with path.open("rb") as stream:
                    check_gguf_layout(stream, path)
        except (ModelFileError, GGUFLayoutError, OSError) as exc:
            self.remove(files.ref.repo, files.commit, files.files)
            reason = str(exc)
            for path in files.paths:
                reason = reason.removeprefix(f"{path}: ")
            raise HubError(f"{files.ref.repo}/{', '.join(files.files)} from {self.endpoint} is not a usable GGUF model "
                           f"({reason}); it was removed from the cache and not registered") from None
        return files

    def cached(self, ref: ModelRef, *, exact: bool = True) -> PulledFiles | None:
        """`ref` from the cache alone, or None. `exact`: only its quant (or Q4_K_M); else also the smallest cached."""
        snapshot = self._snapshot(ref.repo)
        if snapshot is None:
            return None
        files = [(p.relative_to(snapshot).as_posix(), p.stat().st_size) for p in sorted(snapshot.rglob("*"))
                 if p.is_file()]
        try:
            choice = pick(group_ggufs(files), ref, "cache")
        except HubError:
            return None
        if exact and ref.quant is None and (choice.quant or "").upper() != DEFAULT_QUANT:
            return None  # the Hub may hold a Q4_K_M the cache does not: ask it
        projector = pick_projector((f for f, _ in files), choice.files[0])
        chosen = choice.files + ((projector,) if projector else ())
        return PulledFiles(ref, snapshot.name, chosen, tuple(snapshot / f for f in chosen))

    def files_at(self, repo: str, commit: str, files: Iterable[str]) -> tuple[Path, ...] | None:
        """The cached paths of `files` at `commit`, or None when any is missing."""
        snapshot = self._storage(repo) / "snapshots" / commit
        paths = tuple(snapshot / f for f in files)
        return paths if paths and all(p.is_file() for p in paths) else None

    def remove(self, repo: str, commit: str, files: Iterable[str]) -> int:
        """Delete `files` of `repo` at `commit` from the cache (links and blobs); bytes freed."""
        storage = self._storage(repo)
        links = {storage / "snapshots" / commit / name for name in files}
        # A blob two files share (same content under two names) stays while another link needs it.
        kept = {p.resolve() for p in (storage / "snapshots").rglob("*") if p not in links and p.is_file()}
        freed = 0
        for link in links:
            blob = link.resolve()
            if blob.is_file() and blob.is_relative_to(storage.resolve()) and blob not in kept:
                freed += blob.stat().st_size
                blob.unlink()
            link.unlink(missing_ok=True)
        _prune_empty(storage / "snapshots", storage)
        return freed

    def discard_partial(self, repo: str) -> None:
        """Delete `repo`'s unfinished downloads (huggingface_hub keeps them to resume): a failed server pull
        leaves nothing behind in a cache its user cannot see into."""
        storage = self._storage(repo)
        for partial in (storage / "blobs").glob("*.incomplete"):
            partial.unlink(missing_ok=True)
        if (storage / "snapshots").is_dir():
            _prune_empty(storage / "snapshots", storage)
        elif storage.is_dir() and not any((storage / "blobs").glob("*")):
            shutil.rmtree(storage)

    def _storage(self, repo: str) -> Path:
        return self.cache_dir / repo_folder_name(repo_id=repo, repo_type="model")

    def _snapshot(self, repo: str) -> Path | None:
        """The cached snapshot `main` points at (the newest one if there is no ref)."""
        storage = self._storage(repo)
        ref = storage / "refs" / "main"
        if ref.is_file():
            snapshot = storage / "snapshots" / ref.read_text().strip()
            if snapshot.is_dir():
                return snapshot
        snapshots = [p for p in (storage / "snapshots").glob("*") if p.is_dir()]
        return max(snapshots, key=lambda p: p.stat().st_mtime) if snapshots else None

    def _remote_choices(self, repo: str) -> tuple[list[GgufChoice], dict[str, int | None]]:
        """The repo's models, and each file's size as the listing announces it."""
        try:
            info = self._api.model_info(repo, files_metadata=True)
        except RepositoryNotFoundError:
            raise HubNotFoundError(f"no such model repository: {repo} (on {self.endpoint}; a private repo needs HF_TOKEN)") \
                from None
        except GatedRepoError:
            raise HubError(f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN") from None
        except HfHubHTTPError as exc:
            raise HubError(f"{repo}: the Hub at {self.endpoint} answered {_status(exc)}") from None
        except (HTTPError, OfflineModeIsEnabled) as exc:
            raise _Unreachable(str(exc) or type(exc).__name__) from None
        except DownloadRefused as exc:
            raise HubError(f"{repo}: {exc}") from None
        siblings = [(s.rfilename, s.size) for s in info.siblings or []]
        unsafe = [name for name, _ in siblings if not _safe_repo_path(name)]
        if unsafe:
            # huggingface_hub would refuse to write them; a listing that names them is not to be trusted at all.
            raise HubError(f"{repo} on {self.endpoint} lists files outside the repository ({', '.join(map(repr, unsafe[:3]))}"
                           f"{', ...' if len(unsafe) > 3 else ''}); nothing was downloaded")
        return group_ggufs(siblings), dict(siblings)

    def _download(self, repo: str, filename: str, size: int | None, limits: DownloadLimits) -> str:
        if size is None:
            raise HubError(f"{repo}/{filename}: the Hub at {self.endpoint} does not announce its size; nomoat "
                           "downloads only files of a known size")
        log.info("pulling %s from %s/%s", filename, self.endpoint, repo)
        try:
            tqdm_class = self._tqdm if self._report is None else reporting(filename, size, self._report)
            with limits.file(filename, size):
                return str(hf_hub_download(repo, filename, cache_dir=self.cache_dir, endpoint=self.endpoint,
                                           tqdm_class=tqdm_class))
        except DownloadRefused as exc:
            raise HubError(f"{repo}: {exc}") from None
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
            raise _Unreachable(str(exc).splitlines()[0]) from None
        except EntryNotFoundError:
            raise HubError(f"{repo}: the Hub lists {filename} but has no such file") from None
        except HfHubHTTPError as exc:
            raise HubError(f"{repo}/{filename}: the Hub at {self.endpoint} answered {_status(exc)}") from None
        except HTTPError as exc:
            raise _Unreachable(str(exc) or type(exc).__name__) from None
        except (ValueError, OSError, RuntimeError) as exc:
            # huggingface_hub's own refusals: a body of another size than announced, a name it will not write,
            # a metadata answer without an ETag. Its messages run to several lines of advice: the first says it.
            raise HubError(f"{repo}/{filename} from {self.endpoint}: {str(exc).splitlines()[0]}") from None


class _Unreachable(Exception):
    """The Hub could not be asked (no network, a refused connection): the cache may still answer."""


def _status(exc: HfHubHTTPError) -> str:
    response = exc.response
    return f"HTTP {response.status_code}" if response is not None else str(exc).splitlines()[0]


def _safe_repo_path(name: str) -> bool:
    """A repo path that stays inside the folder it is written to: relative, no `..`, no backslash, no NUL."""
    parts = name.split("/")
    return (bool(name) and "\\" not in name and "\0" not in name and not re.match(r"^[A-Za-z]:", name)
            and all(part not in ("", ".", "..") for part in parts))


def _commit_of(path: Path, repo_path: str) -> str:
    """The snapshot (commit) a cached file sits in: `.../snapshots/<commit>/<repo path>`."""
    return path.parents[repo_path.count("/")].name


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove empty folders under `folder`, then `stop` itself when no snapshot is left in it."""
    for sub in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    if folder.is_dir() and not any(folder.iterdir()):
        shutil.rmtree(stop)
