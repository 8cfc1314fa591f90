"""MediaPipe's BlazePose and hand networks (Apache-2.0, Google LLC) as fetched, verified, cached files.

The ``.tflite`` files come from two npm packages at pinned versions, fetched with npm's own client
(``npm pack``) and checked three times: the tarball against npm's pinned sha512 integrity, then
every file against its own pinned size and sha256, before it is renamed into place. Four files are
plain tarball members; the person and palm detectors are packed inside a ``*_packed_assets.data``
blob whose byte ranges the package's ``*_packed_assets_loader.js`` lists, and are cut out of it.

Files live in ``cache_dir()/mediapipe/<package>-<version>/`` (``$FASTMETRO_CACHE``, default
``~/.cache/fastmetro``), or flat in ``$FASTMETRO_MEDIAPIPE_DIR`` when that is set (for users who
keep them elsewhere; checked the same way). ``fastmetro assets fetch [--from PATH]`` fills them in;
:func:`asset_path` hands out a file only once it is verified (once per process per file).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write, cache_dir

LICENCE = "Apache-2.0"
FETCH_HINT = "run `fastmetro assets fetch`"
MEDIAPIPE_DIR_ENV = "FASTMETRO_MEDIAPIPE_DIR"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Package:
    """An npm package at a pinned version, and the sha512 integrity npm reports for its tarball."""

    name: str
    version: str
    integrity: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def folder(self) -> str:
        """``mediapipe-pose-0.5.1675469404``: the cache sub-folder (npm pack's naming, without .tgz)."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}"

    @property
    def tarball(self) -> str:
        """The file name ``npm pack`` gives the tarball."""
        return f"{self.folder}.tgz"


@dataclass(frozen=True)
class Asset:
    """One network file: where it lives in its package, and its pinned size and sha256.

    ``member`` is the tarball member holding the file itself, or (``loader`` set) the packed
    ``.data`` blob holding it at the byte range that ``loader`` (a tarball member) lists for ``file``.
    """

    name: str
    package: Package
    file: str
    size: int
    sha256: str
    member: str
    loader: str | None = None
    about: str = ""


POSE = Package(
    "@mediapipe/pose",
    "0.5.1675469404",
    "sha512-DFZsNWTsSphRIZppnUCuunzBiHP2FdJXR9ehc7mMi4KG+oPaOH0Em3d6kr7Py+TSyTXC1doH88KcF28k2sBxsQ==",
)
HANDS = Package(
    "@mediapipe/hands",
    "0.4.1675469240",
    "sha512-GxoZvL1mmhJxFxjuyj7vnC++JIuInGznHBin5c7ZSq/RbcnGyfEcJrkM/bMu5K1Mz/2Ko+vEX6/+wewmEHPrHg==",
)
_POSE_DATA = ("package/pose_solution_packed_assets.data", "package/pose_solution_packed_assets_loader.js")
_HANDS_DATA = ("package/hands_solution_packed_assets.data", "package/hands_solution_packed_assets_loader.js")


def _table(*assets: Asset) -> dict[str, Asset]:
    return {asset.name: asset for asset in assets}


# Sizes and sha256 computed once from the files of the pinned tarballs above.
ASSETS: dict[str, Asset] = _table(
    Asset(
        "pose_detection",
        POSE,
        "pose_detection.tflite",
        2962288,
        "a63c614bef30d35947f13be361820b1e4e3bec9cfeebf4d11216a18373108e85",
        *_POSE_DATA,
        about="BlazePose person detector: 224x224 RGB -> 2254 anchors x (box, 4 alignment keypoints), score",
    ),
    Asset(
        "pose_landmark_lite",
        POSE,
        "pose_landmark_lite.tflite",
        2819824,
        "f17bfbecadb61c3be1baa8b8d851cc6619c870a87167b32848ad20db306b9d61",
        "package/pose_landmark_lite.tflite",
        about="BlazePose GHUM 3D landmarks (lite): 256x256 crop -> 39 landmarks, world landmarks, mask",
    ),
    Asset(
        "pose_landmark_full",
        POSE,
        "pose_landmark_full.tflite",
        6440512,
        "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
        "package/pose_landmark_full.tflite",
        about="BlazePose GHUM 3D landmarks (full): 256x256 crop -> 39 landmarks, world landmarks, mask",
    ),
    Asset(
        "pose_landmark_heavy",
        POSE,
        "pose_landmark_heavy.tflite",
        27709200,
        "59e42d71bcd44cbdbabc419f0ff76686595fd265419566bd4009ef703ea8e1fe",
        "package/pose_landmark_heavy.tflite",
        about="BlazePose GHUM 3D landmarks (heavy): 256x256 crop -> 39 landmarks, world landmarks, mask",
    ),
    Asset(
        "palm_detection_lite",
        HANDS,
        "palm_detection_lite.tflite",
        1985440,
        "e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18",
        *_HANDS_DATA,
        about="palm detector (lite): 192x192 RGB -> 2016 anchors x (box, 7 keypoints), score",
    ),
    Asset(
        "palm_detection_full",
        HANDS,
        "palm_detection_full.tflite",
        2341280,
        "2f25e740121983f68ffc05f99991d524dc0ea812134f6316a26125816941ee85",
        *_HANDS_DATA,
        about="palm detector (full): 192x192 RGB -> 2016 anchors x (box, 7 keypoints), score",
    ),
    Asset(
        "hand_landmark_lite",
        HANDS,
        "hand_landmark_lite.tflite",
        2071408,
        "d7fde8ac11f8ce03f8663775bfc323f4fc9f2a38062b4f4efa142874ef5b2a48",
        "package/hand_landmark_lite.tflite",
        about="hand landmarks (lite): 224x224 crop -> 21 landmarks, presence, handedness, world landmarks",
    ),
    Asset(
        "hand_landmark_full",
        HANDS,
        "hand_landmark_full.tflite",
        5478688,
        "8c026882c9ec059ce0f8e75266bee5a9a23c341a40e0000df755374d3d1b9b68",
        "package/hand_landmark_full.tflite",
        about="hand landmarks (full): 224x224 crop -> 21 landmarks, presence, handedness, world landmarks",
    ),
)


class AssetStatus(NamedTuple):
    """One row of :func:`status`: ``size`` is the file's size on disk (None when missing)."""

    name: str
    path: Path
    present: bool
    valid: bool
    size: int | None
    problem: str | None


# path -> (device, inode, size, mtime_ns) of the file when its sha256 was found right: a stat per call
# afterwards instead of hashing megabytes; a replaced or rewritten file changes its stat and is re-hashed.
_verified: dict[Path, tuple[int, int, int, int]] = {}


def _asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise FastMetroError(f"unknown MediaPipe network '{name}' (known: {', '.join(ASSETS)})") from None


def asset_dir(asset: Asset) -> Path:
    """The folder ``asset`` is read from and fetched into (``$FASTMETRO_MEDIAPIPE_DIR`` when set)."""
    override = os.environ.get(MEDIAPIPE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return cache_dir() / "mediapipe" / asset.package.folder


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _problem(asset: Asset, path: Path) -> str | None:
    """Why ``path`` is not ``asset`` (``"missing"``, a wrong size or sha256), or None when it is."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if not path.is_file():
        return "not a regular file"
    signature = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if _verified.get(path) == signature:
        return None
    if stat.st_size != asset.size:
        return f"{stat.st_size} bytes instead of {asset.size}"
    try:
        digest = _file_sha256(path)
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if digest != asset.sha256:
        return f"sha256 {digest[:12]}... is not the pinned {asset.sha256[:12]}..."
    _verified[path] = signature
    return None


def asset_path(name: str) -> Path:
    """The verified local file of the MediaPipe network ``name`` (e.g. ``"pose_detection"``).

    Raises:
        FastMetroError: unknown name, or the file is missing or damaged (wrong size or sha256);
            one line naming the folder or file and ``fastmetro assets fetch``.
    """
    asset = _asset(name)
    folder = asset_dir(asset)
    path = folder / asset.file
    problem = _problem(asset, path)
    if problem == "missing":
        raise FastMetroError(f"MediaPipe network '{name}' is not in {folder}; {FETCH_HINT}")
    if problem:
        raise FastMetroError(f"{path}: damaged MediaPipe network '{name}' ({problem}); {FETCH_HINT}")
    return path


def status() -> list[AssetStatus]:
    """Every network's path and state (present, valid, size on disk), in table order."""
    rows = []
    for asset in ASSETS.values():
        path = asset_dir(asset) / asset.file
        problem = _problem(asset, path)
        present = problem != "missing"
        size = path.stat().st_size if present and path.is_file() else None
        rows.append(AssetStatus(asset.name, path, present, problem is None, size, problem))
    return rows


# ---------------------------------------------------------------------------------- fetching
def fetch(
    names: Iterable[str] | None = None,
    source: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = print,
) -> list[Path]:
    """Make the networks ``names`` (default: all) present and valid; return their paths.

    Files already valid are left alone (a fast no-op when all are: ``make`` runs this every time).
    The others come from their package's tarball: downloaded with ``npm pack`` (npm's own client),
    or, with ``source``, read from a folder holding the tarballs ``npm pack`` makes
    (``mediapipe-pose-<version>.tgz``, ``mediapipe-hands-<version>.tgz``) or one such ``.tgz``
    (then, without ``names``, only that package's networks). Every tarball is checked against its
    pinned sha512 and every file against its sha256 before it is renamed into place.

    Raises:
        FastMetroError: unknown name, npm missing or failing, a tarball missing, not matching its
            pin or not holding the files, a file not matching its pin (nothing partial is left).
    """
    say = progress or (lambda message: None)
    source = Path(source).expanduser() if source is not None else None
    wanted = list(dict.fromkeys(_asset(name) for name in names)) if names is not None else None
    if wanted == []:
        return []
    single = _package_of_tarball(source) if source is not None and source.is_file() else None
    if wanted is None:
        wanted = [a for a in ASSETS.values() if single is None or a.package == single]
    elif single is not None:
        others = [a.name for a in wanted if a.package != single]
        if others:
            raise FastMetroError(
                f"{source} is {single.spec}'s tarball, which does not hold {', '.join(others)}: "
                "pass the folder holding both tarballs to --from"
            )
    missing = [a for a in wanted if _problem(a, asset_dir(a) / a.file) is not None]
    if not missing:
        say(f"MediaPipe networks: {len(wanted)} present and verified in {_folders(wanted)}")
        return [asset_dir(a) / a.file for a in wanted]
    packages = list(dict.fromkeys(a.package for a in missing))
    with tempfile.TemporaryDirectory(prefix="fastmetro-mediapipe-") as work:
        for package in packages:
            tarball = _tarball(package, source, Path(work), say)
            _check_integrity(tarball, package)
            _install(tarball, [a for a in missing if a.package == package], Path(work) / package.folder, say)
    return [asset_path(a.name) for a in wanted]


def _folders(assets: list[Asset]) -> str:
    return ", ".join(str(f) for f in dict.fromkeys(asset_dir(a) for a in assets))


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _package_of_tarball(path: Path) -> Package:
    """The pinned package a ``.tgz`` given to ``--from`` is, by its name or else its integrity."""
    packages = list(dict.fromkeys(a.package for a in ASSETS.values()))
    for package in packages:
        if path.name == package.tarball:
            return package
    integrity = _integrity(path)
    for package in packages:
        if integrity == package.integrity:
            return package
    raise FastMetroError(
        f"{path}: not one of the pinned tarballs ({', '.join(p.tarball for p in packages)}): "
        f"its sha512 integrity matches none of them; refusing it"
    )


def _tarball(package: Package, source: Path | None, work: Path, say: Callable[[str], None]) -> Path:
    """The package's tarball: from ``source`` (a .tgz or a folder of them) or downloaded by npm."""
    if source is not None:
        if source.is_file():
            return source
        if not source.is_dir():
            raise FastMetroError(f"{source}: no such file or folder (--from takes the tarballs' folder or a .tgz)")
        tarball = source / package.tarball
        if not tarball.is_file():
            raise FastMetroError(
                f"{source}: has no {package.tarball} (make it with `npm pack {package.spec}` "
                "on a machine with internet access, and copy it here)"
            )
        say(f"using {tarball}")
        return tarball
    npm = shutil.which("npm")
    if npm is None:
        raise FastMetroError(
            f"npm not found: install Node.js/npm to fetch {package.spec}, or copy its tarball "
            "(`npm pack` elsewhere) and run `fastmetro assets fetch --from FOLDER`"
        )
    say(f"downloading {package.spec} with npm pack")
    command = [npm, "pack", package.spec, "--pack-destination", str(work), "--ignore-scripts", "--loglevel=error"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise FastMetroError(f"`npm pack {package.spec}` failed: {error}") from None
    tarball = work / package.tarball
    if done.returncode != 0 or not tarball.is_file():
        reason = _npm_reason(done.stderr or done.stdout or "") or f"exit status {done.returncode}, no {package.tarball}"
        raise FastMetroError(
            f"`npm pack {package.spec}` failed ({reason}); without internet access, copy the "
            "tarball and run `fastmetro assets fetch --from FOLDER`"
        )
    return tarball


def _npm_reason(text: str) -> str:
    """The telling line of npm's error output (not its "code E404" or "complete log" lines)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    telling = [line for line in lines if not re.match(r"npm (error|ERR!) (code |A complete log)", line)]
    return (telling or lines or [""])[0]


def _check_integrity(tarball: Path, package: Package) -> None:
    integrity = _integrity(tarball)
    if integrity != package.integrity:
        raise FastMetroError(
            f"{tarball}: sha512 integrity {integrity[:19]}... is not the pinned "
            f"{package.integrity[:19]}... of {package.spec} (damaged or another file); refusing it"
        )


def _install(tarball: Path, assets: list[Asset], work: Path, say: Callable[[str], None]) -> None:
    """Extract the members ``assets`` need into ``work``, then write each verified file into place."""
    members = sorted({m for a in assets for m in (a.member, a.loader) if m})
    extracted = _extract(tarball, members, work)
    for asset in assets:
        source = extracted[asset.member]
        start = 0
        if asset.loader:
            start, end = _packed_range(extracted[asset.loader], asset.file, tarball)
            if end - start != asset.size or end > source.stat().st_size:
                raise FastMetroError(
                    f"{tarball}: {asset.loader} gives {asset.file} bytes {start}-{end}, which is not "
                    f"its pinned {asset.size} bytes inside {asset.member}; refusing it"
                )
        target = asset_dir(asset) / asset.file
        _write_verified(source, start, asset, target)
        say(f"wrote {target} ({asset.size / 1e6:.1f} MB, sha256 verified)")


def _extract(tarball: Path, members: list[str], work: Path) -> dict[str, Path]:
    """Extract only ``members`` (regular files) with tarfile's ``data`` filter (no links, devices,
    absolute or escaping paths); member name -> extracted path."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            out = {}
            for name in members:
                try:
                    info = archive.getmember(name)
                except KeyError:
                    raise FastMetroError(f"{tarball}: has no {name}") from None
                if not info.isfile():
                    raise FastMetroError(f"{tarball}: {name} is not a regular file; refusing it")
                archive.extract(info, work, filter="data")
                out[name] = work / name
            return out
    except FastMetroError:
        raise
    except (tarfile.TarError, OSError, EOFError) as error:
        raise FastMetroError(f"{tarball}: cannot read the tarball ({type(error).__name__}: {error})") from None


# {"filename": "/third_party/.../pose_detection.tflite", "start": 0, "end": 2962288} in loadPackage({...}).
_RANGE = re.compile(r'"filename"\s*:\s*"([^"]*)"\s*,\s*"start"\s*:\s*(\d+)\s*,\s*"end"\s*:\s*(\d+)')


def _packed_range(loader: Path, file: str, tarball: Path) -> tuple[int, int]:
    """(start, end) of ``file`` in the packed ``.data`` blob, as its loader script lists it."""
    text = loader.read_text(encoding="utf-8", errors="replace")
    ranges = [(int(s), int(e)) for f, s, e in _RANGE.findall(text) if f.rsplit("/", 1)[-1] == file]
    if len(ranges) != 1:
        raise FastMetroError(f"{tarball}: {loader.name} lists {file} {len(ranges)} times, not once; refusing it")
    return ranges[0]


def _write_verified(source: Path, start: int, asset: Asset, target: Path) -> None:
    """Copy ``asset.size`` bytes of ``source`` from ``start`` to ``target`` atomically, only if their
    sha256 is the pinned one (else the temporary file is removed and ``target`` left as it was)."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader, atomic_write(target) as writer:
        reader.seek(start)
        left = asset.size
        while left > 0:
            chunk = reader.read(min(_CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            writer.write(chunk)
            left -= len(chunk)
        if left or digest.hexdigest() != asset.sha256:
            raise FastMetroError(
                f"{source}: {asset.file} from {asset.package.spec} does not match its pinned "
                f"sha256 {asset.sha256[:12]}...; refusing it"
            )
    stat = target.stat()  # just hashed on the way in: no need to hash it again in asset_path
    _verified[target] = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


__all__ = ["ASSETS", "Asset", "AssetStatus", "LICENCE", "Package", "asset_dir", "asset_path", "fetch", "status"]
