"""Hub datasets (`climbmix`, `fineweb-edu`): parquet files downloaded into the Hugging Face cache.

huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported, so they are
read here at call time and passed explicitly. Where a file is stored with Xet, hf_xet keeps the chunks it
downloaded in a cache of its own (HF_XET_CACHE, else HF_HOME's `xet`): the validation file's text may lie there
too. Retries are left to huggingface_hub where it has them; `_transient` says where it has none. A file already in
the cache is used without asking the server. A new download is verified (sha256 against an LFS ETag, then the
parquet footer); a bad one is evicted and fetched once more.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from autoresearch.data.sources.base import TRAIN, VAL, Part
from autoresearch.data.sources.local import NoTextColumn, parquet_texts
from autoresearch.errors import ConfigError, DataError
from autoresearch.files import write_text_atomic

SHA256 = re.compile(r"[0-9a-f]{64}")
RETRIES, BACKOFF_S = 3, 2.0  # our extra attempts, and the first wait between them (it doubles)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
NETWORK_MODULES = frozenset({"httpx", "httpx2", "httpcore", "requests", "urllib3"})
OFFLINE_HINT = (
    "check the network connection and proxy settings (HTTPS_PROXY), or set HF_ENDPOINT to a reachable mirror; "
    "to work offline use --dataset python-source or --dataset local:PATH. "
    "Files already downloaded are reused without the network with HF_HUB_OFFLINE=1"
)
NOT_FOUND_HINT = "check HF_ENDPOINT (the Hub, or a full mirror of it); for a private or gated dataset set HF_TOKEN"
RETRY_HINT = "try again later (finished files are reused), or set HF_ENDPOINT to a mirror"
IMPORT_HINT = "HF_HUB_OFFLINE was set when huggingface_hub was imported; unset it before starting"
CACHE_HINT = (
    "unset HF_HUB_OFFLINE to download it, point HF_HUB_CACHE or HF_HOME at a cache that holds it, "
    "or use --dataset python-source or --dataset local:PATH"
)
NOTED_CACHES = "hub-caches.txt"  # in the prepared data's folder: the hub caches its files came from
NOT_FOUND = dict(
    RepositoryNotFoundError="dataset repository", RevisionNotFoundError="revision", EntryNotFoundError="file"
)


@dataclass(frozen=True)
class HubDataset:
    name: str
    repo_id: str  # a dataset repository
    train_pattern: str  # `train_pattern.format(i)` is the i-th training file
    val_file: str  # pinned validation file, never among the training files
    default_shards: int
    max_shards: int
    revision: str = "main"

    def train_files(self, n: int) -> list[str]:
        return [self.train_pattern.format(i) for i in range(n)]


# name, repository, training file pattern, pinned validation file, default and maximum number of training files
HUB_DATASETS: dict[str, HubDataset] = {
    "climbmix": HubDataset(
        "climbmix", "karpathy/climbmix-400b-shuffle", "shard_{:05d}.parquet", "shard_06542.parquet", 10, 6542
    ),
    "fineweb-edu": HubDataset(
        "fineweb-edu",
        "HuggingFaceFW/fineweb-edu",
        "sample/10BT/{:03d}_00000.parquet",
        "sample/10BT/013_00000.parquet",
        1,
        13,
    ),
}


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    cache_dir: Path
    offline: bool
    xet_dir: Path  # hf_xet's cache of downloaded chunks

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HubSettings:
        """What huggingface_hub (and hf_xet) would use if it were imported now: same variables (its legacy
        HUGGINGFACE_HUB_CACHE too), same defaults."""
        env = os.environ if env is None else env
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
        return cls(
            endpoint=(env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"),
            cache_dir=_path(hub),
            offline=env.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"},
            xet_dir=_path(env.get("HF_XET_CACHE") or os.path.join(home, "xet")),
        )


def hub_caches(env: Mapping[str, str], data_dir: Path) -> list[Path]:
    """Every place a hub dataset's files (its validation file among them) or hf_xet's chunks of them may lie, to
    hide from train.py: where `prepare` found or downloaded the data in `data_dir` (noted there: it may have run
    with other variables), and wherever huggingface_hub's cache and hf_xet's would be under each of the variables in
    `env` that can place them."""
    noted = data_dir / NOTED_CACHES
    places = noted.read_text().splitlines() if noted.is_file() else []
    home = env.get("HOME") or "~"
    places += [env.get("HF_HUB_CACHE"), env.get("HUGGINGFACE_HUB_CACHE"), env.get("HF_XET_CACHE")]
    for hf_home in (
        env.get("HF_HOME"),
        os.path.join(env.get("XDG_CACHE_HOME") or f"{home}/.cache", "huggingface"),
        f"{home}/.cache/huggingface",
    ):
        places += [hf_home and f"{hf_home}/hub", hf_home and f"{hf_home}/xet"]
    settings = HubSettings.from_env(env)
    places += [settings.cache_dir, settings.xet_dir]
    return sorted({_path(p) for p in places if p})


def note_cache(data_dir: Path, *caches: Path) -> None:
    """Note in the prepared data's folder the hub cache its files came from, and hf_xet's (`hub_caches`)."""
    noted = data_dir / NOTED_CACHES
    known = noted.read_text().splitlines() if noted.is_file() else []
    new = [str(c) for c in dict.fromkeys(caches) if str(c) not in known]
    if new:
        write_text_atomic(noted, "".join(f"{p}\n" for p in [*known, *new]))


def _path(text: str | Path) -> Path:
    return Path(os.path.expandvars(str(text))).expanduser().absolute()


@dataclass(frozen=True)
class CachedFile:
    path: Path  # the cache's snapshots/<commit>/<filename>, a link to blobs/<etag>
    identity: str  # the ETag (an LFS file's sha256), or commit/filename where the cache holds copies, not links
    size: int
    commit: str

    @classmethod
    def at(cls, path: str | Path, filename: str) -> CachedFile:
        path, blob = Path(path), Path(os.path.realpath(path))
        commit = path.parents[filename.count("/")].name
        identity = blob.name if blob.name != path.name else f"{commit}/{filename}"
        return cls(path, identity, blob.stat().st_size, commit)


class HubSource:
    """The first `shards` training files of a hub dataset, one part each, then its pinned validation file."""

    def __init__(self, dataset: HubDataset, shards: int | None):
        n = dataset.default_shards if shards is None else shards
        if not 1 <= n <= dataset.max_shards:
            raise ConfigError(
                f"--shards {n} is out of range for {dataset.name}",
                hint=f"choose 1 to {dataset.max_shards} (default {dataset.default_shards})",
            )
        self.dataset, self.shards = dataset, n
        self.name = self.slug = dataset.name  # more shards add parts to the same prepared data
        self.request = {"dataset": dataset.name, "repo": dataset.repo_id, "revision": dataset.revision, "shards": n}
        self._files = [*dataset.train_files(n), dataset.val_file]
        self._cached: dict[str, CachedFile] = {}
        self.cache_dir: Path | None = None  # where `fetch` found or put the files
        self.xet_dir: Path | None = None  # where hf_xet kept the chunks of the files `fetch` downloaded
        self.endpoint = ""  # the server `fetch` downloads from

    def check(self) -> None:
        """Nothing to check before `prepare` writes: the files' problems are found as `fetch` downloads them."""

    def fetch(self) -> None:
        settings = HubSettings.from_env()
        self.cache_dir, self.xet_dir, self.endpoint = settings.cache_dir, settings.xet_dir, settings.endpoint
        for k, filename in enumerate(self._files, 1):
            if filename not in self._cached:
                self._cached[filename] = self._fetch_file(filename, f"[{k}/{len(self._files)}]", settings)

    def parts(self) -> list[Part]:
        assert len(self._cached) == len(self._files), "fetch() first"
        names = [f"train-{i:05d}" for i in range(self.shards)] + ["val"]
        return [
            Part(name, VAL if name == "val" else TRAIN, partial(self._documents, f), self._cached[f].identity)
            for name, f in zip(names, self._files, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        ds = self.dataset
        info: dict[str, Any] = {"name": self.name, "repo": ds.repo_id, "repo_type": "dataset", "revision": ds.revision}
        info |= {"shards": self.shards, "val_file": ds.val_file}
        if self._cached:
            info["files"] = [
                {"file": name, "bytes": c.size, "etag": c.identity, "commit": c.commit}
                for name, c in self._cached.items()
            ]
        return info

    def _documents(self, filename: str) -> Iterator[str]:
        path = self._cached[filename].path
        try:
            yield from parquet_texts(path)
        except NoTextColumn as exc:  # as the server sent it (its sha256 was checked): fetched again, it is the same
            raise DataError(
                f"{filename} of {self.dataset.repo_id}: {exc.args[0]}",
                hint=f"it is no file of the dataset's: the server it came from (HF_ENDPOINT, now {self.endpoint}) "
                f"sent a file of another kind; point HF_ENDPOINT at the Hub or a full mirror of it, delete "
                f"{os.path.realpath(path)} and run the same `autoresearch prepare` command again",
            ) from exc
        except DataError as exc:
            raise DataError(
                f"{filename} of {self.dataset.repo_id}: {exc.args[0]}",
                hint=f"the cached copy is damaged: delete {os.path.realpath(path)} and run the same "
                "`autoresearch prepare` command again to download it again",
            ) from exc

    def _fetch_file(self, filename: str, tag: str, s: HubSettings) -> CachedFile:
        from huggingface_hub import try_to_load_from_cache

        ds = self.dataset
        found = try_to_load_from_cache(
            ds.repo_id, filename, cache_dir=s.cache_dir, revision=ds.revision, repo_type="dataset"
        )
        # Hashed whole, as a download is: a file fetched only to be read whole (tokenized), when data is to be built
        damaged = _problem(Path(found), full=True) if isinstance(found, str) else None
        if isinstance(found, str) and damaged is None:
            _say(f"{tag} cached {filename}")
            return CachedFile.at(found, filename)
        if s.offline:
            state = "damaged in" if isinstance(found, str) else "not in"
            raise DataError(
                f"{filename} of {ds.repo_id} is {state} the cache {s.cache_dir}, "
                "and offline mode is on (HF_HUB_OFFLINE=1)",
                hint=CACHE_HINT,
            )
        if isinstance(found, str):
            _say(f"{tag} the cached {filename} is damaged ({damaged}): downloading it again")
            _evict(Path(found))
        _hub_logs_once()
        _say(f"{tag} downloading {filename} from {s.endpoint}")
        for again in (False, True):
            path = self._download(filename, s, force=again)
            problem = _problem(path, full=True)
            if problem is None:
                return CachedFile.at(path, filename)
            _evict(path)
            _say(f"{tag} {filename} arrived corrupt ({problem})" + ("" if again else "; downloading it again"))
        raise DataError(
            f"{filename} of {ds.repo_id} from {s.endpoint} arrived corrupt twice: {problem}",
            hint="something between here and the server damages downloads; try again later, "
            "or set HF_ENDPOINT to another mirror",
        )

    def _download(self, filename: str, s: HubSettings, *, force: bool) -> Path:
        """`hf_hub_download`, retried with back-off after the failures it does not retry itself."""
        from huggingface_hub import hf_hub_download

        ds = self.dataset
        get = partial(hf_hub_download, ds.repo_id, filename, repo_type="dataset", revision=ds.revision)
        for attempt in range(RETRIES + 1):
            try:
                return Path(
                    get(endpoint=s.endpoint, cache_dir=s.cache_dir, local_files_only=False, force_download=force)
                )
            except Exception as exc:
                if attempt == RETRIES or not _transient(exc):
                    error = _explain(exc, f"{filename} of {ds.repo_id} (revision {ds.revision})", s.endpoint)
                    if error is None:
                        raise
                    raise error from exc
                wait, culprit = BACKOFF_S * 2**attempt, exc.__cause__ or exc
                reason = f"HTTP {_status(culprit)}" if _status(culprit) else _first_line(culprit)
                _say(f"      {filename}: {reason}; retrying in {wait:.0f}s")
                time.sleep(wait)
        raise AssertionError("unreachable")


def _hub_logs_once() -> None:
    """huggingface_hub prints its warnings (each retry) through a handler of its own and passes them on to the root
    logger as well, where the CLI prints them as `warning: ...`: every line came out twice. Where the root logger
    prints, the library's own handler is dropped."""
    import huggingface_hub.utils.logging  # noqa: F401  (it adds its handler when imported)

    library = logging.getLogger("huggingface_hub")
    if library.propagate and logging.getLogger().handlers:
        for handler in list(library.handlers):
            library.removeHandler(handler)


def _transient(exc: Exception) -> bool:
    """A failure huggingface_hub does not retry: a 408/429/5xx answer to the download itself. Version 0.x also
    gives up at once on its metadata request and on a body cut short; 1.x and later retry and resume those."""
    from huggingface_hub import __version__
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    legacy = __version__.startswith("0.")
    if isinstance(exc, LocalEntryNotFoundError):  # the metadata request failed and nothing is cached
        cause = exc.__cause__
        return legacy and cause is not None and (_status(cause) in TRANSIENT_STATUS or _from_network_library(cause))
    if isinstance(exc, HfHubHTTPError):
        return _status(exc) in TRANSIENT_STATUS
    if legacy:  # 0.x downloads with requests, and resumes by itself only after the two it names
        import requests

        handled = (requests.ConnectionError, requests.ReadTimeout)
        return isinstance(exc, requests.RequestException) and not isinstance(exc, handled)
    return False


def _explain(exc: Exception, what: str, endpoint: str) -> DataError | None:
    """What went wrong downloading `what` and what to do about it; None where it is not about the data."""
    from huggingface_hub import errors as hf

    if isinstance(exc, hf.LocalEntryNotFoundError):  # the metadata request failed, after retries where it has them
        cause = exc.__cause__
        if isinstance(cause, hf.OfflineModeIsEnabled):
            return DataError(f"cannot download {what}: huggingface_hub was imported in offline mode", hint=IMPORT_HINT)
        status = _status(cause) if cause is not None else None
        detail = f"HTTP {status}" if status else _first_line(cause or exc)
        hint = ("the server answers errors: try again later; " if status else "") + OFFLINE_HINT
        return DataError(f"cannot reach {endpoint} to download {what}: {detail}", hint=hint)
    for kind, missing in NOT_FOUND.items():
        if isinstance(exc, getattr(hf, kind)):
            return DataError(f"{missing} not found at {endpoint}: {what}", hint=NOT_FOUND_HINT)
    if isinstance(exc, hf.HfHubHTTPError):
        return DataError(f"downloading {what} from {endpoint} failed: HTTP {_status(exc)}", hint=RETRY_HINT)
    if isinstance(exc, (ConnectionError, TimeoutError)) or _from_network_library(exc):
        return DataError(f"lost the connection to {endpoint} while downloading {what}: {exc}", hint=OFFLINE_HINT)
    if isinstance(exc, OSError):
        return DataError(f"downloading {what} from {endpoint} failed: {exc}", hint=RETRY_HINT)
    return None


def _problem(path: Path, *, full: bool) -> str | None:
    """Why a cached file is unusable, or None. Checks the parquet footer; `full` first hashes the blob and
    compares it with its name, which in huggingface_hub's cache is the ETag: an LFS file's sha256."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blob = Path(os.path.realpath(path))
    if full and SHA256.fullmatch(blob.name):
        h = hashlib.sha256()
        with blob.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        if h.hexdigest() != blob.name:
            return f"its sha256 is {h.hexdigest()[:12]}..., the server announced {blob.name[:12]}..."
    try:
        pq.ParquetFile(blob).close()
    except (pa.ArrowException, OSError) as exc:
        return f"not a readable parquet file: {exc}"
    return None


def _evict(path: Path) -> None:
    """Remove a file from huggingface_hub's cache: the snapshot entry and the blob it links to."""
    blob = Path(os.path.realpath(path))
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _status(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _from_network_library(exc: BaseException) -> bool:
    return type(exc).__module__.partition(".")[0] in NETWORK_MODULES


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
