"""Fetching checkpoint files from their official sources: the only code that downloads (``harness weights download``).

A :class:`~harness.method.Checkpoint` lists its sources in ``download``, tried in order:

- ``https://...`` (or ``http://``): a direct link;
- ``gdrive:<file id>``: a Google Drive file, through ``https://drive.google.com/uc?export=download&id=<id>``; a large
  file first answers with a virus-scan page whose form (or ``confirm`` token) leads to the file; an HTML answer
  without one (quota exceeded, not shared) is reported as such;
- ``hf:<owner>/<repo>/<path in repo>``: a file of a Hugging Face Hub model repository. ``huggingface_hub`` resolves it
  (``get_hf_file_metadata``: the file's location, size and, for LFS files, its sha256; ``$HF_ENDPOINT`` is
  honoured); the bytes come through the same resumable HTTP code as the direct links.

Every file lands at ``DIR/<key>/<filename>`` (the first place :meth:`WeightStore.find` looks, so two files of the same
name never collide). It streams into ``<file>.part`` (``<file>.part.src`` names the source it came from), resumes
with ``Range: bytes=N-`` when a ``.part`` from the same source exists (a server that answers 200 instead of 206
restarts it), is checked against the known size and sha256 (a mismatch deletes the ``.part``) and is renamed into
place with ``os.replace``. ``mirrors`` (``--mirror PREFIX=REPLACEMENT``) rewrite URL prefixes, e.g. for a local mirror
(``https://huggingface.co`` rewritten also sets the Hub endpoint); the tests use it to point at a loopback server.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import http.client
import http.cookiejar
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from harness.method import Checkpoint
from harness.weights import WeightStore

GDRIVE_URL = "https://drive.google.com/uc?export=download&id={id}"
HF_ENDPOINT = "https://huggingface.co"
# The files the metrics use, by key: Inception (FID, KID), the feature extractors' files (CLIP ViT-B/32 for FID_CLIP;
# VGG16 and the LPIPS heads for LPIPS) and BiSeNet (label maps of real images, for the hair-region metrics).
METRIC_KEYS = ("inception_fid", "clip_vitb32", "vgg16_imagenet", "lpips_vgg_v0.1", "bisenet19")
CHUNK = 1 << 20
TIMEOUT_S = 60.0
USER_AGENT = "hair-harness (weights download; python urllib)"

Mirrors = Sequence[tuple[str, str]]


class FetchError(Exception):
    """One source could not deliver the file; the message says why."""


@dataclass(frozen=True)
class Outcome:
    checkpoint: Checkpoint
    state: str  # fetched | already there | failed | no source
    path: Path | None = None
    detail: str = ""


def destination(ckpt: Checkpoint, root: Path) -> Path:
    """Where a downloaded checkpoint is written: ``root/<key>/<filename>``."""
    return Path(root) / ckpt.key / ckpt.filename


def parse_mirrors(items: Iterable[str]) -> list[tuple[str, str]]:
    """``["https://a.org=http://127.0.0.1:8000/a"]`` -> ``[("https://a.org", "http://127.0.0.1:8000/a")]``."""
    out = []
    for item in items:
        prefix, eq, replacement = item.partition("=")
        if not eq or not prefix or not replacement:
            raise ValueError(f"--mirror {item!r}: expected PREFIX=REPLACEMENT, e.g. https://huggingface.co=http://hf.local")
        out.append((prefix, replacement))
    return out


def rewrite(url: str, mirrors: Mirrors = ()) -> str:
    """``url`` with the first matching mirror prefix replaced."""
    for prefix, replacement in mirrors:
        if url.startswith(prefix):
            return replacement + url[len(prefix):]
    return url


# ------------------------------------------------------------------------------------------------ HTTP

class _RangeRefused(Exception):
    """416: the ``.part`` is already whole (``Content-Range: bytes */N`` with N = its size) or not from this file."""


def _open(opener: urllib.request.OpenerDirector, url: str, offset: int = 0) -> http.client.HTTPResponse:
    """GET ``url`` (from byte ``offset`` on); HTTP errors and unreachable hosts become :class:`FetchError`."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return opener.open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            raise _RangeRefused(exc.headers.get("Content-Range", "")) from None
        raise FetchError(f"HTTP {exc.code} {exc.reason} ({url})") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"offline or host unreachable: {exc.reason} ({url})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"connection failed: {type(exc).__name__}: {exc} ({url})") from None


def _is_html(response) -> bool:
    return (response.headers.get("Content-Type") or "").split(";")[0].strip().lower() == "text/html"


def _resumes(response, offset: int) -> bool:
    """Whether ``response`` continues the file at ``offset`` (a 206 whose Content-Range starts there)."""
    return bool(offset) and response.status == 206 and (response.headers.get("Content-Range") or "").startswith(
        f"bytes {offset}-")


def _write(response, part: Path, offset: int, *, desc: str, progress: bool) -> str:
    """Stream ``response`` into ``part`` (appending at ``offset`` when it resumes there, else from the start);
    returns the sha256 of the whole file."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    if _resumes(response, offset):
        with open(part, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                digest.update(block)
        mode = "ab"
    else:  # a fresh download, or a server that ignored the Range (200): start over
        offset, mode = 0, "wb"
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    received = offset
    with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                                      desc=desc, disable=not progress) as bar:
        try:
            for block in iter(lambda: response.read(CHUNK), b""):
                fh.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"interrupted after {received:,} bytes ({type(exc).__name__}); the partial file "
                             f"{part} is kept: run the command again to resume") from None
        fh.flush()
        os.fsync(fh.fileno())
    if total is not None and received != total:
        raise FetchError(f"connection closed after {received:,} of {total:,} bytes; the partial file {part} is kept: "
                         "run the command again to resume")
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_url(url: str, dest: Path, *, size: int | None = None, sha256: str | None = None, progress: bool = True,
              opener: urllib.request.OpenerDirector | None = None, tag: str | None = None,
              resolve: Callable[[http.client.HTTPResponse, int], http.client.HTTPResponse] | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically: resume ``dest.part``, verify ``size`` / ``sha256``, ``os.replace``.

    ``tag`` names the source in ``dest.part.src`` (default: ``url``): a ``.part`` from another source is discarded.
    ``resolve(response, offset)`` may turn a first answer into the file's (the Google Drive confirmation).
    """
    dest = Path(dest)
    part, src = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.src")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tag = tag or url
    if part.exists() and (not src.exists() or src.read_text().strip() != tag):
        part.unlink()  # bytes of another source (or of unknown origin) never continue into this one
    src.write_text(tag + "\n")
    try:
        digest = _download(url, part, size=size, progress=progress, opener=opener or urllib.request.build_opener(),
                           resolve=resolve, desc=dest.name)
    except BaseException:
        if not part.exists():
            src.unlink(missing_ok=True)
        raise
    got = part.stat().st_size
    problem = ""
    if size is not None and got != size:
        problem = f"size mismatch: got {got:,} bytes, expected {size:,}"
    elif sha256 and digest != sha256.lower():
        problem = f"sha256 mismatch: got {digest}, expected {sha256}"
    if problem:
        part.unlink()
        src.unlink(missing_ok=True)
        raise FetchError(f"{problem}; the download was deleted")
    os.replace(part, dest)
    src.unlink(missing_ok=True)
    return dest


def _download(url: str, part: Path, *, size: int | None, progress: bool, opener: urllib.request.OpenerDirector,
              resolve, desc: str) -> str:
    """Bring ``part`` up to the whole file (resuming it when the server allows); returns its sha256."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size and offset:
        return _sha256(part)  # the .part is whole already: only verify it

    def answer(offset: int):
        response = _open(opener, url, offset)
        return resolve(response, offset) if resolve is not None else response

    try:
        response = answer(offset)
    except _RangeRefused as refused:
        whole = re.fullmatch(r"bytes \*/(\d+)", str(refused).strip())
        if whole and int(whole.group(1)) == offset:
            return _sha256(part)
        part.unlink()
        offset = 0
        response = answer(0)
    with response:
        if offset and response.status == 206 and not _resumes(response, offset):  # another range than asked for
            response.close()
            part.unlink()
            offset = 0
            response = _open(opener, response.geturl(), 0)
        with response:
            if _is_html(response) and not desc.endswith((".html", ".htm")):
                raise FetchError(f"an HTML page came instead of the file ({url})")
            return _write(response, part, offset, desc=desc, progress=progress)


# ------------------------------------------------------------------------------------------------ Google Drive

class _DrivePage(HTMLParser):
    """The parts of a Drive answer page that matter: forms with their inputs, ``confirm=`` links, the title."""

    def __init__(self):
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.links: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("action", ""), {}))
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1][1][a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.links.append(a["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def drive_confirm_url(page: str, base: str, file_id: str, cookies: dict[str, str] | None = None) -> str | None:
    """The URL a Drive virus-scan page leads to (its download form, a ``confirm=`` link, or the old
    ``download_warning`` cookie), or ``None`` when the page is something else."""
    parser = _DrivePage()
    parser.feed(page)
    for action, fields in parser.forms:
        if "confirm" in fields or "id" in fields:
            return urllib.parse.urljoin(base, action) + "?" + urllib.parse.urlencode(fields)
    if parser.links:
        return urllib.parse.urljoin(base, html.unescape(parser.links[0]))
    found = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    token = found.group(1) if found else next(
        (v for k, v in (cookies or {}).items() if k.startswith("download_warning") and v), None)
    if token is None:
        return None
    return urllib.parse.urljoin(base, f"/uc?export=download&confirm={token}&id={file_id}")


def drive_refusal(page: str) -> str:
    """Why a Drive HTML page is not the file, in words."""
    text = page.lower()
    if "quota" in text or "too many users have viewed or downloaded" in text:
        return "Google Drive refuses: the file's download quota is exceeded (too many downloads recently); try later"
    if "accounts.google.com" in text or "you need access" in text or "request access" in text or "sign in" in text:
        return "Google Drive refuses: the file is not shared publicly (a sign-in / request-access page)"
    parser = _DrivePage()
    parser.feed(page)
    title = f" (page title: {parser.title.strip()!r})" if parser.title.strip() else ""
    return f"Google Drive answered with an HTML page instead of the file and no download confirmation{title}"


def fetch_gdrive(file_id: str, dest: Path, *, size: int | None = None, sha256: str | None = None,
                 progress: bool = True, mirrors: Mirrors = ()) -> Path:
    """A Google Drive file through ``uc?export=download``, confirming the virus-scan page of large files."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    url = rewrite(GDRIVE_URL.format(id=file_id), mirrors)

    def resolve(response, offset):
        if not _is_html(response):
            return response
        with response:
            page = response.read().decode("utf-8", "replace")
        target = drive_confirm_url(page, response.geturl(), file_id, {c.name: c.value or "" for c in jar})
        if target is None:
            raise FetchError(drive_refusal(page))
        answer = _open(opener, rewrite(target, mirrors), offset)
        if _is_html(answer):
            with answer:
                raise FetchError(drive_refusal(answer.read().decode("utf-8", "replace")))
        return answer

    return fetch_url(url, dest, size=size, sha256=sha256, progress=progress, opener=opener,
                     tag=f"gdrive:{file_id}", resolve=resolve)


# ------------------------------------------------------------------------------------------------ Hugging Face

def hf_parts(spec: str) -> tuple[str, str]:
    """``"AIRI-Institute/HairFastGAN/pretrained_models/StyleGAN/ffhq.pt"`` -> (repo id, path in the repo)."""
    owner, _, rest = spec.partition("/")
    name, _, path = rest.partition("/")
    if not owner or not name or not path:
        raise FetchError(f"hf:{spec}: expected hf:<owner>/<repo>/<path in repo>")
    return f"{owner}/{name}", path


def hf_endpoint(mirrors: Mirrors = ()) -> str | None:
    """The Hub endpoint a mirror rule gives ``https://huggingface.co``; ``None``: huggingface_hub's own
    (``$HF_ENDPOINT`` or the Hub)."""
    endpoint = rewrite(HF_ENDPOINT, mirrors)
    return None if endpoint == HF_ENDPOINT else endpoint.rstrip("/")


def fetch_hf(spec: str, dest: Path, *, size: int | None = None, sha256: str | None = None, progress: bool = True,
             mirrors: Mirrors = ()) -> Path:
    """A Hub file: location, size and LFS sha256 from ``huggingface_hub``, bytes by :func:`fetch_url`."""
    repo_id, path = hf_parts(spec)
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
    except ImportError:
        raise FetchError("huggingface_hub is not installed (pip install huggingface_hub)") from None
    endpoint = hf_endpoint(mirrors)
    url = hf_hub_url(repo_id, path, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, endpoint=endpoint)
    except Exception as exc:  # huggingface_hub's errors: not found, gated, offline (httpx), ...
        first = (str(exc).strip().splitlines() or [""])[0]
        why = "offline or host unreachable: " if "Connect" in type(exc).__name__ else ""
        raise FetchError(f"Hugging Face Hub: {why}{type(exc).__name__}: {first} ({url})") from None
    if size is not None and meta.size is not None and meta.size != size:
        raise FetchError(f"the Hub's {repo_id}/{path} has {meta.size:,} bytes, expected {size:,}")
    lfs_sha = meta.etag if meta.etag and re.fullmatch(r"[0-9a-f]{64}", meta.etag) else None
    if sha256 and lfs_sha and lfs_sha != sha256.lower():
        raise FetchError(f"the Hub's {repo_id}/{path} has sha256 {lfs_sha}, expected {sha256}")
    return fetch_url(rewrite(meta.location or url, mirrors), dest, size=size if size is not None else meta.size,
                     sha256=sha256 or lfs_sha, progress=progress, tag=f"hf:{spec}@{meta.commit_hash}")


# ------------------------------------------------------------------------------------------------ checkpoints

def fetch_source(source: str, dest: Path, *, size: int | None = None, sha256: str | None = None,
                 progress: bool = True, mirrors: Mirrors = ()) -> Path:
    """One ``download`` entry of a checkpoint to ``dest``."""
    kw = {"size": size, "sha256": sha256, "progress": progress}
    if source.startswith("gdrive:"):
        return fetch_gdrive(source[len("gdrive:"):], dest, mirrors=mirrors, **kw)
    if source.startswith("hf:"):
        return fetch_hf(source[len("hf:"):], dest, mirrors=mirrors, **kw)
    if source.startswith(("https://", "http://")):
        return fetch_url(rewrite(source, mirrors), dest, **kw)
    raise FetchError(f"unknown source scheme {source!r} (https://, gdrive:, hf:)")


def fetch(ckpt: Checkpoint, root: Path, store: WeightStore | None = None, *, progress: bool = True,
          mirrors: Mirrors = (), log: Callable[[str], None] = lambda msg: None) -> Outcome:
    """Make ``ckpt`` available: already there (found by ``store`` and verified), fetched into ``root``, or why not."""
    store = store or WeightStore(root)
    status = store.status(ckpt, verify_hash=True)
    if status.state == "found":
        return Outcome(ckpt, "already there", status.path)
    if not ckpt.download:
        return Outcome(ckpt, "no source", None, "no automatic source (form-gated, ours to train, or no direct "
                       f"link published); get it by hand: {ckpt.source}")
    dest = destination(ckpt, root)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(dest.parent):
            return _fetch_sources(ckpt, dest, progress=progress, mirrors=mirrors, log=log)
    except (FetchError, OSError) as exc:
        return Outcome(ckpt, "failed", None, str(exc))
    finally:
        with contextlib.suppress(OSError):
            dest.parent.rmdir()  # leave no empty folder behind (a kept .part keeps it)


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder``: one download per file at a time, across processes."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FetchError(f"another download into {folder} is running") from None
        yield
    finally:
        os.close(fd)


def _fetch_sources(ckpt: Checkpoint, dest: Path, *, progress: bool, mirrors: Mirrors,
                   log: Callable[[str], None]) -> Outcome:
    reasons = []
    for source in ckpt.download:
        log(f"fetching {ckpt.filename} from {source}")
        try:
            path = fetch_source(source, dest, size=ckpt.size, sha256=ckpt.sha256, progress=progress, mirrors=mirrors)
        except FetchError as exc:
            reasons.append(f"{source}: {str(exc).replace(f' ({source})', '')}")
            continue
        except OSError as exc:  # the destination: disk full, permissions
            reasons.append(f"{source}: cannot write {dest} ({exc})")
            continue
        except Exception as exc:  # a malformed answer or URL: report it, go on with the other files
            reasons.append(f"{source}: unexpected {type(exc).__name__}: {exc}")
            continue
        known = [w for w, v in (("size", ckpt.size), ("sha256", ckpt.sha256)) if v]
        checked = f", {' and '.join(known)} checked" if known else ""
        tried = "".join(f"\ntried first: {r}" for r in reasons)
        return Outcome(ckpt, "fetched", path, f"{path.stat().st_size:,} bytes from {source}{checked}{tried}")
    return Outcome(ckpt, "failed", None, "\n".join(reasons))


def fetch_all(checkpoints: Iterable[Checkpoint], root: Path, store: WeightStore | None = None, *,
              progress: bool = True, mirrors: Mirrors = (), log: Callable[[str], None] = lambda msg: None
              ) -> list[Outcome]:
    """:func:`fetch` for each checkpoint, in order."""
    return [fetch(c, root, store, progress=progress, mirrors=mirrors, log=log) for c in checkpoints]


def select(registry: Sequence[Checkpoint], method_checkpoints: Sequence[Checkpoint] = (), metrics: bool = False,
           everything: bool = True) -> list[Checkpoint]:
    """The checkpoints to fetch: the methods' plus (``metrics``) the metrics' files; ``everything``: the registry."""
    if everything:
        return list(registry)
    chosen: dict[str, Checkpoint] = {c.key: c for c in method_checkpoints}
    if metrics:
        for c in registry:
            if c.key in METRIC_KEYS or any(u.startswith("metrics") for u in c.used_by):
                chosen.setdefault(c.key, c)
    return list(chosen.values())


def summary(outcomes: Sequence[Outcome]) -> str:
    """The end-of-command report: fetched / already there / could not fetch, with the reasons."""
    lines = []
    groups = [("fetched", ("fetched",)), ("already there", ("already there",)),
              ("could not fetch", ("failed", "no source"))]
    for title, states in groups:
        chosen = [o for o in outcomes if o.state in states]
        if not chosen:
            continue
        lines.append(f"{title} ({len(chosen)}):")
        for o in chosen:
            where = f" -> {o.path}" if o.path else ""
            lines.append(f"  {o.checkpoint.filename} [{o.checkpoint.key}]{where}")
            lines += [f"      {line}" for line in o.detail.splitlines()]
    return "\n".join(lines)
