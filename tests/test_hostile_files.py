"""Hostile model files through the CLI: code in Keras configs never runs, zip bombs and
huge declared HDF5 datasets are refused by size checks before anything is read.

(Pickles that try to run code are covered by test_safepickle.py; a Lambda whose
function is planted in config.json, through ``load_model``, by test_importers.py.)
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from lstm_doctor.cli.main import cli  # noqa: E402

import keras
import h5py


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_exit_2(r, path, needle):
    assert r.exit_code == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert str(path) in line and needle in line, line


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras")
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4)])
    model.save(root / "m.keras")
    model.save(root / "m.h5")
    return root


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes], compress=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members.update(replace)
    with zipfile.ZipFile(dst, "w", compression=compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def test_custom_objects_and_lambdas_are_never_imported_or_run(saved, tmp_path, monkeypatch):
    """A config naming a custom class in an importable module, a registered custom
    object and a Lambda with code: the weights load, nothing is imported or run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil_module.py").write_text("open('IMPORTED', 'w').close()\nclass Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with zipfile.ZipFile(saved / "m.keras") as zf:
        config = json.loads(zf.read("config.json"))
    layers = config["config"]["layers"]
    code = "__import__('os').system('touch RAN')"
    hostile = [
        {"module": "evil_module", "class_name": "Evil", "registered_name": "evil_module>Evil",
         "config": {"name": "evil", "trainable": True}},
        {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
         "config": {"name": "lam", "function": {"class_name": "__lambda__", "config": {"code": code}},
                    "arguments": {}}},
    ]
    config["config"]["layers"] = [layers[0], *hostile, *layers[1:]]
    bad = _rewrite(saved / "m.keras", tmp_path / "hostile.keras", {"config.json": json.dumps(config).encode()})
    r = invoke("inspect", bad, "--format", "json")
    assert r.exit_code in (0, 2), r.stderr
    if r.exit_code == 0:
        assert json.loads(r.stdout)["layers"][0]["H"] == 4
    else:
        one_line_exit_2(r, bad, "")
    assert "evil_module" not in sys.modules
    assert not (tmp_path / "IMPORTED").exists() and not (tmp_path / "RAN").exists()


def test_a_zip_bomb_member_is_refused(saved, tmp_path):
    # 64 MB of zeros deflate to ~64 KB: over the 200× expansion limit.
    bomb = _rewrite(saved / "m.keras", tmp_path / "bomb.keras", {"model.weights.h5": bytes(64 << 20)})
    assert bomb.stat().st_size < 1 << 20
    r = invoke("diagnose", bomb)
    one_line_exit_2(r, bomb, "zip bomb")


def _declare_size(path: Path, member: str, size: int):
    """Patch the uncompressed size that the central directory declares for ``member``."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    pos = 0
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        assert pos >= 0, "member not found"
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46 : pos + 46 + name_len] == name:
            struct.pack_into("<I", data, pos + 24, size)
            break
        pos += 4
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_a_member_declaring_a_huge_size_is_refused(saved, tmp_path, monkeypatch, member):
    """The declared size decides, before any byte is read (a 32-bit field declares at most
    4 GB: the weights' 16 GB limit is lowered to 1 GB to show the check)."""
    from lstm_doctor.load import keras as keras_importer

    monkeypatch.setattr(keras_importer, "MAX_MEMBER_BYTES", 1 << 30)
    needle = "over the"
    bad = tmp_path / "declared.keras"
    bad.write_bytes((saved / "m.keras").read_bytes())
    _declare_size(bad, member, 0xFFFF0000)  # ~4 GB declared
    r = invoke("diagnose", bad)
    one_line_exit_2(r, bad, needle)


def test_a_huge_declared_hdf5_dataset_is_refused_before_reading(saved, tmp_path, monkeypatch):
    bad = tmp_path / "huge.h5"
    bad.write_bytes((saved / "m.h5").read_bytes())
    with h5py.File(bad, "r+") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 2 else None)
        kernel = next(n for n in names if "recurrent" not in n)
        del f[kernel]
        # 100,000 × 100,000 float32 = 40 GB declared; chunked and never written, so the file stays small.
        f.create_dataset(kernel, shape=(100_000, 100_000), dtype="float32", chunks=(64, 64))
    assert bad.stat().st_size < 1 << 20
    read = []
    real_getitem = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, k: read.append(self.name) or real_getitem(self, k))
    r = invoke("diagnose", bad)
    one_line_exit_2(r, bad, "over the")
    assert not any(n.endswith(kernel.split("/")[-1]) and "recurrent" not in n for n in read)


def test_a_huge_declared_npy_shape_is_refused(tmp_path):
    """An .npy header declaring 10^12 values over a few bytes of data: no allocation."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000, 1000), }"
    header = header + " " * (63 - (len(header) + 10) % 64) + "\n"
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(64))
    folder = tmp_path / "m"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(folder / "weights.npz", W=rng.normal(size=(1000, 8)), U=rng.normal(size=(2, 8)), b=np.zeros(8))
    (folder / "lstm.toml").write_text('[model]\nweights = "weights.npz"\n')
    r = invoke("diagnose", folder, "--inputs", tmp_path / "x.npy")
    one_line_exit_2(r, tmp_path / "x.npy", "")
