"""The MediaPipe network files: pins, verification, fetching (offline: fake tarballs, fake npm), the CLI.

The tests on the real files read what ``make`` fetched into fastmetro's cache; everything else runs
in a temporary ``FASTMETRO_CACHE`` with tarballs built here, so nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from fastmetro.cli import main
from fastmetro.errors import FastMetroError
from fastmetro.mediapipe import assets

NAMES = (
    "pose_detection",
    "pose_landmark_lite",
    "pose_landmark_full",
    "pose_landmark_heavy",
    "palm_detection_lite",
    "palm_detection_full",
    "hand_landmark_lite",
    "hand_landmark_full",
)
HINT = "run `fastmetro assets fetch`"


@pytest.fixture
def real_cache(monkeypatch):
    """The cache ``make`` filled (the user's $FASTMETRO_CACHE or ~/.cache/fastmetro)."""
    monkeypatch.delenv("FASTMETRO_MEDIAPIPE_DIR", raising=False)
    monkeypatch.setattr(assets, "_verified", {})


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FASTMETRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMETRO_MEDIAPIPE_DIR", raising=False)
    monkeypatch.setattr(assets, "_verified", {})
    return tmp_path / "cache"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ the real files
def test_pins_match_the_fetched_files(real_cache):
    assert tuple(assets.ASSETS) == NAMES  # the names other areas code against
    assert assets.POSE.spec == "@mediapipe/pose@0.5.1675469404"
    assert assets.POSE.integrity == (
        "sha512-DFZsNWTsSphRIZppnUCuunzBiHP2FdJXR9ehc7mMi4KG+oPaOH0Em3d6kr7Py+TSyTXC1doH88KcF28k2sBxsQ=="
    )
    assert assets.HANDS.spec == "@mediapipe/hands@0.4.1675469240"
    assert assets.HANDS.integrity == (
        "sha512-GxoZvL1mmhJxFxjuyj7vnC++JIuInGznHBin5c7ZSq/RbcnGyfEcJrkM/bMu5K1Mz/2Ko+vEX6/+wewmEHPrHg=="
    )
    for name, asset in assets.ASSETS.items():
        path = assets.asset_path(name)
        data = path.read_bytes()
        assert path.name == f"{name}.tflite"
        assert path.parent.name == asset.package.folder
        assert (len(data), sha256(data)) == (asset.size, asset.sha256), name
        assert data[4:8] == b"TFL3", name  # a whole TFLite flatbuffer: the packed ranges were cut right


def test_status_reports_every_real_file_valid(real_cache):
    rows = assets.status()
    assert [row.name for row in rows] == list(NAMES)
    assert all(row.present and row.valid and row.problem is None for row in rows)
    assert [row.size for row in rows] == [a.size for a in assets.ASSETS.values()]


# ------------------------------------------------------------------------- missing / damaged
@pytest.fixture
def real_copy(tmp_path, monkeypatch):
    """Copy real network ``name`` into a temporary FASTMETRO_CACHE; returns its path there."""
    monkeypatch.delenv("FASTMETRO_MEDIAPIPE_DIR", raising=False)
    monkeypatch.setattr(assets, "_verified", {})

    def copy(name: str) -> Path:
        original = assets.asset_path(name)  # the real cache, before FASTMETRO_CACHE moves
        monkeypatch.setenv("FASTMETRO_CACHE", str(tmp_path / "cache"))
        target = assets.asset_dir(assets.ASSETS[name]) / original.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, target)
        return target

    return copy


def test_missing_file_is_one_line_naming_the_command(empty_cache):
    folder = empty_cache / "mediapipe" / "mediapipe-pose-0.5.1675469404"
    with pytest.raises(FastMetroError) as error:
        assets.asset_path("pose_detection")
    assert str(error.value) == f"MediaPipe network 'pose_detection' is not in {folder}; {HINT}"


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_damaged_file_is_one_line_naming_the_file_and_the_command(real_copy, damage):
    path = real_copy("hand_landmark_lite")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[:-1]
    else:
        data += b"\0"
    path.write_bytes(bytes(data))
    with pytest.raises(FastMetroError) as error:
        assets.asset_path("hand_landmark_lite")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: damaged MediaPipe network 'hand_landmark_lite'")
    assert message.endswith(HINT)
    assert ("sha256" in message) == (damage == "flip")
    row = next(r for r in assets.status() if r.name == "hand_landmark_lite")
    assert row.present and not row.valid and row.size == len(data)


def test_hash_checked_once_per_process_per_file(real_copy, monkeypatch):
    path = real_copy("hand_landmark_lite")
    calls = []
    real_hash = assets._file_sha256
    monkeypatch.setattr(assets, "_file_sha256", lambda p: calls.append(p) or real_hash(p))
    for _ in range(3):
        assert assets.asset_path("hand_landmark_lite") == path
    assert calls == [path]
    # Rewritten since (a new mtime): checked again, and the damage is seen.
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    stat = path.stat()
    shutil.os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(FastMetroError, match="damaged"):
        assets.asset_path("hand_landmark_lite")


def test_mediapipe_dir_env_is_used_and_checked(real_cache, tmp_path, monkeypatch):
    original = assets.asset_path("palm_detection_lite")
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copyfile(original, folder / "palm_detection_lite.tflite")
    monkeypatch.setenv("FASTMETRO_MEDIAPIPE_DIR", str(folder))
    assert assets.asset_path("palm_detection_lite") == folder / "palm_detection_lite.tflite"
    with pytest.raises(FastMetroError, match=f"is not in {folder}; run `fastmetro assets fetch`"):
        assets.asset_path("pose_detection")
    (folder / "palm_detection_lite.tflite").write_bytes(b"TFL3 not really")
    with pytest.raises(FastMetroError, match="damaged MediaPipe network 'palm_detection_lite'"):
        assets.asset_path("palm_detection_lite")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(FastMetroError, match="unknown MediaPipe network 'pose'.*pose_landmark_heavy"):
        assets.asset_path("pose")


# ----------------------------------------------------------------- fetching from fake tarballs
def _tgz(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o550  # npm's tarballs hold read-only files: the copies must still be writable over
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return path


class Fake:
    """A fake package (one plain member, two networks packed in a .data blob) pinned in place of the real table."""

    def __init__(self, folder: Path, monkeypatch, links: dict[str, str] | None = None, bad_pin: str | None = None):
        self.whole, self.det, self.palm = b"TFL3whole" * 700, b"TFL3det" * 500, b"TFL3palm" * 300
        labels = b"Left\nRight"  # a packed file we do not want, first, so ranges do not start at 0
        blob = labels + self.det + self.palm
        ranges = [
            ("/m/handedness.txt", 0, len(labels)),
            ("/m/det.tflite", len(labels), len(labels) + len(self.det)),
            ("/m/palm.tflite", len(labels) + len(self.det), len(blob)),
        ]
        files = ", ".join(json.dumps({"filename": f, "start": s, "end": e}) for f, s, e in ranges)
        loader = f'  var x = 1;\n    loadPackage({{"files": [{files}], "remote_package_size": {len(blob)}}});\n'
        members = {"package/README.md": b"fake", "package/loader.js": loader.encode(), "package/blob.data": blob}
        if not links:
            members["package/whole.tflite"] = self.whole
        package = assets.Package("@fake/pose", "1.0.0", "")
        self.tarball = _tgz(folder / package.tarball, members, links)
        self.package = replace(package, integrity=assets._integrity(self.tarball))
        pins = {"fake_whole": self.whole, "fake_det": self.det, "fake_palm": self.palm}
        if bad_pin:
            pins[bad_pin] = pins[bad_pin][:-1] + b"!"  # same size, other bytes
        self.table = {
            "fake_whole": assets.Asset(
                "fake_whole",
                self.package,
                "whole.tflite",
                len(self.whole),
                sha256(pins["fake_whole"]),
                "package/whole.tflite",
            ),
            "fake_det": assets.Asset(
                "fake_det",
                self.package,
                "det.tflite",
                len(self.det),
                sha256(pins["fake_det"]),
                "package/blob.data",
                "package/loader.js",
            ),
            "fake_palm": assets.Asset(
                "fake_palm",
                self.package,
                "palm.tflite",
                len(self.palm),
                sha256(pins["fake_palm"]),
                "package/blob.data",
                "package/loader.js",
            ),
        }
        monkeypatch.setattr(assets, "ASSETS", self.table)
        self.folder = folder

    def expected(self) -> dict[str, bytes]:
        return {"whole.tflite": self.whole, "det.tflite": self.det, "palm.tflite": self.palm}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def test_fetch_from_a_folder_end_to_end(empty_cache, tmp_path, monkeypatch):
    fake = Fake(tmp_path / "tarballs", monkeypatch)
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)  # npm must not be needed
    said = []
    paths = assets.fetch(source=fake.folder, progress=said.append)
    cached = empty_cache / "mediapipe" / "fake-pose-1.0.0"
    assert paths == [cached / "whole.tflite", cached / "det.tflite", cached / "palm.tflite"]
    assert _files(cached) == fake.expected()  # plain member and both packed byte ranges, exactly
    assert all((p.stat().st_mode & 0o200) for p in paths)
    assert [assets.asset_path(n) for n in fake.table] == paths
    assert said[0] == f"using {fake.tarball}" and len(said) == 4
    # Present and valid: nothing to do, no tarball or npm needed.
    fake.tarball.unlink()
    said.clear()
    assert assets.fetch(progress=said.append) == paths
    assert said == [f"MediaPipe networks: 3 present and verified in {cached}"]


def test_fetch_from_a_tgz_and_only_named_files(empty_cache, tmp_path, monkeypatch):
    fake = Fake(tmp_path / "t", monkeypatch)
    renamed = fake.tarball.rename(tmp_path / "copied.tgz")  # recognised by its integrity
    assets.fetch(["fake_palm"], source=renamed, progress=None)
    assert _files(empty_cache / "mediapipe" / "fake-pose-1.0.0") == {"palm.tflite": fake.palm}


def test_fetch_refuses_a_tarball_whose_integrity_does_not_match(empty_cache, tmp_path):
    folder = tmp_path / "tarballs"
    real = assets.ASSETS["pose_detection"]
    _tgz(folder / real.package.tarball, {"package/pose_landmark_lite.tflite": b"TFL3 not theirs"})
    with pytest.raises(FastMetroError, match=r"sha512 integrity .* is not the pinned .*@mediapipe/pose.*refusing it"):
        assets.fetch(["pose_landmark_lite"], source=folder, progress=None)
    lone = _tgz(tmp_path / "other.tgz", {"package/x": b"x"})
    with pytest.raises(FastMetroError, match="matches none of them; refusing it"):
        assets.fetch(source=lone, progress=None)
    assert not any(p.is_file() for p in empty_cache.rglob("*"))


def test_fetch_from_a_folder_without_the_tarball_names_it(empty_cache, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FastMetroError, match="has no mediapipe-hands-0.4.1675469240.tgz .*npm pack @mediapipe/hands"):
        assets.fetch(["hand_landmark_full"], source=tmp_path / "empty", progress=None)


def test_a_file_not_matching_its_pin_leaves_no_partial_file(empty_cache, tmp_path, monkeypatch):
    fake = Fake(tmp_path / "t", monkeypatch, bad_pin="fake_palm")
    cached = empty_cache / "mediapipe" / "fake-pose-1.0.0"
    cached.mkdir(parents=True)
    (cached / "palm.tflite").write_bytes(b"old damaged copy")
    with pytest.raises(FastMetroError, match="palm.tflite from @fake/pose@1.0.0 does not match its pinned sha256"):
        assets.fetch(source=fake.folder, progress=None)
    # The good files landed whole; the bad one left the old file as it was and no temporary file.
    assert _files(cached) == {"whole.tflite": fake.whole, "det.tflite": fake.det, "palm.tflite": b"old damaged copy"}


def test_a_link_member_is_refused(empty_cache, tmp_path, monkeypatch):
    fake = Fake(tmp_path / "t", monkeypatch, links={"package/whole.tflite": "/etc/passwd"})
    with pytest.raises(FastMetroError, match="package/whole.tflite is not a regular file; refusing it"):
        assets.fetch(["fake_whole"], source=fake.folder, progress=None)
    assert not (empty_cache / "mediapipe" / "fake-pose-1.0.0" / "whole.tflite").exists()


# --------------------------------------------------------------------------- npm (faked here)
def test_fetch_runs_npm_pack_without_a_shell(empty_cache, tmp_path, monkeypatch):
    fake = Fake(tmp_path / "registry", monkeypatch)
    commands = []

    def npm(command, **kwargs):
        commands.append((command, kwargs))
        destination = Path(command[command.index("--pack-destination") + 1])
        shutil.copyfile(fake.tarball, destination / fake.package.tarball)
        return subprocess.CompletedProcess(command, 0, fake.package.tarball + "\n", "")

    monkeypatch.setattr(assets.shutil, "which", lambda name: "/opt/node/bin/npm" if name == "npm" else None)
    monkeypatch.setattr(assets.subprocess, "run", npm)
    assets.fetch(progress=None)
    assert _files(empty_cache / "mediapipe" / "fake-pose-1.0.0") == fake.expected()
    [(command, kwargs)] = commands
    assert command[:3] == ["/opt/node/bin/npm", "pack", "@fake/pose@1.0.0"] and "--ignore-scripts" in command
    assert not kwargs.get("shell")


def test_npm_missing_or_failing_is_one_line(empty_cache, tmp_path, monkeypatch):
    Fake(tmp_path / "t", monkeypatch)
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)
    with pytest.raises(FastMetroError, match=r"npm not found: install Node.js/npm .*fetch --from FOLDER"):
        assets.fetch(progress=None)
    monkeypatch.setattr(assets.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(
        assets.subprocess,
        "run",
        lambda command, **kw: subprocess.CompletedProcess(
            command, 1, "", "npm error code E404\nnpm error 404 Not Found - GET https://registry/@fake%2fpose\n"
        ),
    )
    with pytest.raises(FastMetroError) as error:
        assets.fetch(progress=None)
    assert "\n" not in str(error.value) and "404 Not Found" in str(error.value) and "--from" in str(error.value)


# ----------------------------------------------------------------------------------- the CLI
def test_cli_list_and_fetch_on_the_real_cache(real_cache, capsys):
    for argv in (["assets"], ["assets", "list"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        for name in NAMES:
            assert any(line.startswith(name) and "Apache-2.0" in line and " ok " in line for line in out.splitlines())
        assert "@mediapipe/pose@0.5.1675469404" in out and "fetch" not in out
    assert main(["assets", "fetch"]) == 0
    assert "MediaPipe networks: 8 present and verified" in capsys.readouterr().out


def test_cli_list_shows_missing_and_damaged(real_copy, capsys):
    path = real_copy("pose_detection")
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("pose_detection") and "damaged" in line for line in out.splitlines())
    assert any(line.startswith("hand_landmark_full") and "missing" in line for line in out.splitlines())
    assert "pose_detection: 1000 bytes instead of 2962288" in out and HINT.split("run ")[1] in out


def test_cli_fetch_from_and_its_errors(empty_cache, tmp_path, monkeypatch, capsys):
    fake = Fake(tmp_path / "tarballs", monkeypatch)
    assert main(["assets", "fetch", "--from", str(fake.folder), "fake_det"]) == 0
    assert _files(empty_cache / "mediapipe" / "fake-pose-1.0.0") == {"det.tflite": fake.det}
    capsys.readouterr()
    for argv in (["assets", "fetch", "nope"], ["assets", "fetch", "--from", str(tmp_path / "absent")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
