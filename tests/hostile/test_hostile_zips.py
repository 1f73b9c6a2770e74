"""Damaged and hostile zipped bundles (issue 37.6 and the low items): bad CRC, an encrypted entry, an
unknown compression method and a truncated file are "damaged zip", never a traceback; two entries of
one name are refused as ambiguous; a manifest that lists far more than the zip holds (a compression
bomb with a correct sha256) is refused before a byte is written. On the shared fixture bundle."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest

from edge_kto_runtime.bundle import BundleError, open_bundle
from edge_kto_runtime.bundle_zip import zip_bundle

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bundle"


def _zip(tmp_path: Path) -> Path:
    return zip_bundle(FIXTURE, tmp_path / "b.zip")


def _patch_central(z: Path, name: str, fn) -> None:
    """Rewrite ``name``'s central-directory record (and its local header) with ``fn(flags, method)``."""
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo(name)
    cd = data.find(b"PK\x01\x02")  # the first central-directory record
    while cd != -1:
        n = struct.unpack_from("<H", data, cd + 28)[0]
        if data[cd + 46 : cd + 46 + n].decode() == name:
            break
        cd = data.find(b"PK\x01\x02", cd + 4)
    flags, method = struct.unpack_from("<HH", data, cd + 8)
    flags, method = fn(flags, method)
    struct.pack_into("<HH", data, cd + 8, flags, method)
    struct.pack_into("<HH", data, info.header_offset + 6, flags, method)
    z.write_bytes(bytes(data))


def test_the_fixture_zip_loads(tmp_path):
    assert open_bundle(_zip(tmp_path)).manifest["name"] == "fixture"


@pytest.mark.parametrize("damage", ["bad crc", "encrypted", "unknown compression", "truncated", "cut central"])
def test_a_damaged_zip_is_named_damaged_not_a_traceback(tmp_path, damage):
    z = _zip(tmp_path)
    if damage == "bad crc":
        data = bytearray(z.read_bytes())
        i = data.find(b'"edge-kto-bundle"')  # inside the stored manifest.json
        data[i + 1] ^= 0x20
        z.write_bytes(bytes(data))
    elif damage == "encrypted":
        _patch_central(z, "manifest.json", lambda flags, method: (flags | 0x1, method))
    elif damage == "unknown compression":
        _patch_central(z, "manifest.json", lambda flags, method: (flags, 99))
    elif damage == "truncated":
        z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    else:
        z.write_bytes(z.read_bytes()[:-10])
    with pytest.raises(BundleError, match="damaged zip"):
        open_bundle(z)
    assert not (tmp_path / "b.zip.extracted").exists()


def test_two_entries_of_one_name_are_refused(tmp_path):
    z = tmp_path / "dup.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(FIXTURE.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(FIXTURE).as_posix())
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("manifest.json", json.dumps({"name": "the other one"}))
    with pytest.raises(BundleError, match="'manifest.json' appears twice"):
        open_bundle(z)


def test_a_manifest_listing_a_compression_bomb_is_refused_before_writing(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    zeros = b"\0" * (64 << 20)  # 64 MB that deflate to ~64 KB; the manifest lists them truthfully
    (src / "model-q4_k_m.gguf").write_bytes(zeros)
    m = json.loads((src / "manifest.json").read_text())
    m["artifacts"][0].update(bytes=len(zeros), sha256=hashlib.sha256(zeros).hexdigest())
    (src / "manifest.json").write_text(json.dumps(m))
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
    assert z.stat().st_size < 1 << 20
    with pytest.raises(BundleError, match="compression bomb"):
        open_bundle(z)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip", "src"]  # nothing was written


def test_a_plain_file_that_is_not_a_zip_is_named(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(BundleError, match="neither a bundle folder nor a zip"):
        open_bundle(f)
