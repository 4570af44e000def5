"""convkit.datasets: the data folder, the IDX reader on good and broken files, the
real MNIST / Fashion-MNIST files (when present) and make_xo."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import convkit
from convkit import datasets


def idx_bytes(array, type_byte=0x08):
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.asarray(array, dtype=dtype[type_byte]).tobytes()


def write(path, data):
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as file:
            file.write(data)
    else:
        path.write_bytes(data)
    return path


def fake_mnist(directory, n_train=5, n_test=3, compress=True, **overrides):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    files = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        files[f"{split}-images-idx3-ubyte"] = idx_bytes(
            rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        files[f"{split}-labels-idx1-ubyte"] = idx_bytes(np.arange(n, dtype=np.uint8) % 10)
    files.update(overrides)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write(directory / (name + suffix), data)
    return directory


# ---------------------------------------------------------------- data_dir

def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVKIT_DATA", str(tmp_path))
    assert datasets.data_dir() == tmp_path
    monkeypatch.setenv("CONVKIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="CONVKIT_DATA=.*nowhere.* is not a folder"):
        datasets.data_dir()


def test_data_dir_defaults_and_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVKIT_DATA", raising=False)
    first, second = tmp_path / "a" / "shared" / "data", tmp_path / "b" / "shared" / "data"
    monkeypatch.setattr(datasets, "_default_data_dirs", lambda: [first, second])
    with pytest.raises(FileNotFoundError, match=rf"CONVKIT_DATA.*{first}.*{second}"):
        datasets.data_dir()
    second.mkdir(parents=True)
    assert datasets.data_dir() == second
    first.mkdir(parents=True)
    assert datasets.data_dir() == first


def test_default_is_shared_data_beside_the_checkout():
    expected = Path(convkit.__file__).resolve().parents[2] / "shared" / "data"
    assert datasets._default_data_dirs()[0] == expected


# ---------------------------------------------------------------- read_idx

@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("type_byte, dtype", [(0x08, np.uint8), (0x09, np.int8),
                                              (0x0B, np.int16), (0x0C, np.int32),
                                              (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_round_trip(tmp_path, suffix, type_byte, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if type_byte == 0x08:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write(tmp_path / ("data" + suffix), idx_bytes(array, type_byte))
    result = datasets.read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    np.testing.assert_array_equal(result, array)
    assert result.flags.writeable


def test_read_idx_big_endian_dims(tmp_path):
    header = bytes([0, 0, 8, 2]) + (300).to_bytes(4, "big") + (2).to_bytes(4, "big")
    path = write(tmp_path / "x", header + bytes(600))
    assert datasets.read_idx(path).shape == (300, 2)


BROKEN = {
    "empty": b"",
    "short magic": b"\x00\x00",
    "bad magic": b"\x1f\x8b\x08\x03" + bytes(20),
    "unknown type": bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 0]),
    "zero dims": bytes([0, 0, 8, 0]),
    "truncated header": bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0]),
    "truncated data": bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(5),
    "trailing bytes": bytes([0, 0, 8, 1, 0, 0, 0, 2]) + bytes(3),
}


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("case", BROKEN)
def test_read_idx_refuses_broken_files(tmp_path, case, suffix):
    path = write(tmp_path / ("broken" + suffix), BROKEN[case])
    with pytest.raises(ValueError, match="broken"):
        datasets.read_idx(path)


def test_read_idx_refuses_truncated_and_corrupt_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8) + 7))
    truncated = tmp_path / "cut.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.gz.*truncated"):
        datasets.read_idx(truncated)
    corrupt = tmp_path / "bad.gz"
    corrupt.write_bytes(data[:12] + bytes([data[12] ^ 0xFF]) + data[13:])
    with pytest.raises(ValueError, match="bad.gz"):
        datasets.read_idx(corrupt)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(ValueError, match="plain.gz.*gzip"):
        datasets.read_idx(not_gzip)


# ---------------------------------------------------------------- load_mnist

@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_from_a_folder(tmp_path, compress):
    folder = fake_mnist(tmp_path / "mnist", compress=compress)
    images, labels = datasets.load_mnist(folder, split="train")
    assert images.shape == (5, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4])
    images, labels = datasets.load_mnist(folder, "test")
    assert images.shape == (3, 28, 28) and labels.shape == (3,)


def test_load_mnist_uses_the_data_dir(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "mnist", n_train=4)
    fake_mnist(tmp_path / "fashion-mnist", n_train=6)
    monkeypatch.setenv("CONVKIT_DATA", str(tmp_path))
    assert len(datasets.load_mnist()[0]) == 4
    assert len(datasets.load_fashion_mnist()[0]) == 6


@pytest.mark.parametrize("override, match", [
    ({"train-labels-idx1-ubyte": idx_bytes(np.zeros(4, dtype=np.uint8))},
     "5 images but .* 4 labels"),
    ({"train-images-idx3-ubyte": idx_bytes(np.zeros((5, 27, 28), dtype=np.uint8))},
     r"train-images.*\(n, 28, 28\).*\(5, 27, 28\)"),
    ({"train-images-idx3-ubyte": idx_bytes(np.zeros((5, 28, 28), dtype=np.float32), 0x0D)},
     "train-images.*uint8"),
    ({"train-labels-idx1-ubyte": idx_bytes(np.zeros((5, 1), dtype=np.uint8))},
     r"train-labels.*\(n,\)"),
    ({"train-labels-idx1-ubyte": idx_bytes(np.array([0, 1, 2, 3, 10], dtype=np.uint8))},
     "train-labels.*0..9"),
    ({"train-images-idx3-ubyte": idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))[:-1]},
     "train-images.*truncated"),
])
def test_load_mnist_refuses_inconsistent_files(tmp_path, override, match):
    folder = fake_mnist(tmp_path / "mnist", **override)
    with pytest.raises(ValueError, match=match):
        datasets.load_mnist(folder)


def test_load_mnist_missing_files_and_bad_split(tmp_path):
    folder = fake_mnist(tmp_path / "mnist")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.load_mnist(folder, "test")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        datasets.load_mnist(tmp_path / "nothing")
    with pytest.raises(ValueError, match="split"):
        datasets.load_mnist(folder, "validation")


def _real(loader, split):
    try:
        return loader(split=split)
    except FileNotFoundError as error:
        pytest.skip(f"dataset files not available: {error}")


def test_real_mnist():
    images, labels = _real(datasets.load_mnist, "train")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    np.testing.assert_array_equal(labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(np.bincount(labels),
                                  [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    images, labels = _real(datasets.load_mnist, "test")
    assert images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(labels),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert images.max() == 255 and images.min() == 0


def test_real_fashion_mnist():
    images, labels = _real(datasets.load_fashion_mnist, "test")
    assert images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(labels[:5], [9, 2, 1, 1, 6])
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)


# ---------------------------------------------------------------- make_xo

def test_make_xo_shapes_values_and_balance():
    images, labels = datasets.make_xo(101, seed=0)
    assert images.shape == (101, 1, 9, 9) and images.dtype == np.float32
    assert labels.shape == (101,) and labels.dtype == np.int64
    assert set(np.unique(images)) == {-1.0, 1.0}
    assert abs(int(labels.sum()) - 50) <= 1
    images, labels = datasets.make_xo(10, size=15, seed=1)
    assert images.shape == (10, 1, 15, 15)


def test_make_xo_is_seeded():
    a, b = datasets.make_xo(20, seed=3), datasets.make_xo(20, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], datasets.make_xo(20, seed=4)[0])


def test_make_xo_draws_an_x_or_an_o():
    """Without noise each shape fills a square box, is symmetric in it, and its centre
    is ink for an X and background for an O."""
    images, labels = datasets.make_xo(300, seed=2, noise=0.0)
    for image, label in zip(images[:, 0], labels):
        rows, cols = np.nonzero(image > 0)
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        assert bottom - top == right - left >= 4
        box = image[top:bottom + 1, left:right + 1]
        np.testing.assert_array_equal(box, box[:, ::-1])
        np.testing.assert_array_equal(box, box.T)
        centre = image[(top + bottom) // 2, (left + right) // 2]
        assert centre == (1.0 if label == 0 else -1.0)


def test_make_xo_varies_and_adds_noise():
    images, _ = datasets.make_xo(400, seed=5, noise=0.0)
    boxes = {tuple(np.argwhere(image[0] > 0).min(axis=0)) for image in images}
    assert len(boxes) > 5
    assert len({int((image > 0).sum()) for image in images}) > 10
    noisy, _ = datasets.make_xo(400, seed=5, noise=0.1)
    flipped = np.mean(noisy != images)
    assert 0.08 < flipped < 0.12


@pytest.mark.parametrize("kwargs, match", [
    ({"n": -1}, "n"), ({"n": 2.5}, "n"), ({"n": 4, "size": 4}, "size"),
    ({"n": 4, "noise": 0.5}, "noise"),
])
def test_make_xo_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.make_xo(**kwargs)


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_refuses_absurd_dimensions_before_allocating(tmp_path, suffix):
    header = bytes([0, 0, 0x0E, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31)
    path = write(tmp_path / ("huge" + suffix), header + bytes(64))
    with pytest.raises(ValueError, match=r"huge.*\(2147483648, 2147483648, 2147483648\)"):
        datasets.read_idx(path)
