"""Datasets: an IDX reader for MNIST and Fashion-MNIST, and the X-versus-O toy images.

Nothing is downloaded. The data folder is ``$CONVKIT_DATA`` when set, else
``shared/data`` beside the checkout (``../shared/data`` from the repository
root), holding ``mnist/`` and ``fashion-mnist/`` with the original
``*-idx?-ubyte.gz`` files.
"""

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

# IDX type byte -> big-endian dtype of the data.
IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _default_data_dirs():
    import convkit

    package_root = Path(convkit.__file__).resolve().parents[2]
    return [package_root / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def data_dir():
    """The data folder: ``$CONVKIT_DATA``, else ``shared/data`` beside the checkout.

    Raises FileNotFoundError naming every place looked at when none exists.
    """
    env = os.environ.get("CONVKIT_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"CONVKIT_DATA={env!r} is not a folder")
        return path
    candidates = _default_data_dirs()
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        "no data folder found: set CONVKIT_DATA to the folder holding mnist/ and "
        f"fashion-mnist/, or put it at {candidates[0]} or {candidates[1]}")


def _open(path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_exact(file, size, path, what):
    data = file.read(size)
    if len(data) != size:
        raise ValueError(f"{path}: truncated, the file ends inside the {what} "
                         f"({len(data)} of {size} bytes)")
    return data


def _check_plausible_size(path, expected, shape):
    """Refuse a header whose sizes the file cannot hold, before allocating for it.

    A plain file must be exactly that long; a gzip file cannot expand more
    than deflate's limit of about 1032:1.
    """
    size = path.stat().st_size
    if path.suffix == ".gz":
        if expected > 1032 * size + 1024:
            raise ValueError(f"{path}: corrupt header, shape {shape} needs {expected} bytes but "
                             f"{size} compressed bytes cannot hold them")
    elif expected > size:
        raise ValueError(f"{path}: truncated, shape {shape} needs {expected} bytes but the file "
                         f"has {size}")


def read_idx(path):
    """Read an IDX file (gzip-compressed when the name ends in .gz) into an array.

    The header is a magic number ``0x00 0x00 type ndim`` and ``ndim`` big-endian
    uint32 sizes; the data follow in C order. Returns a native-endian array of
    shape (sizes...). Raises ValueError naming the file when it is truncated,
    has trailing bytes, a bad magic number or is not valid gzip.
    """
    path = Path(path)
    try:
        with _open(path) as file:
            magic = _read_exact(file, 4, path, "magic number")
            if magic[:2] != b"\x00\x00" or magic[2] not in IDX_DTYPES or magic[3] == 0:
                raise ValueError(f"{path}: not an IDX file (magic number "
                                 f"0x{magic.hex()}, expected 0x0000TTDD with a known type)")
            ndim = magic[3]
            shape = struct.unpack(f">{ndim}I", _read_exact(file, 4 * ndim, path, "header"))
            dtype = IDX_DTYPES[magic[2]]
            _check_plausible_size(path, 4 + 4 * ndim + int(np.prod(shape, dtype=object))
                                  * dtype.itemsize, shape)
            data = np.empty(shape, dtype=dtype)
            view = memoryview(data).cast("B")
            got = file.readinto(view) if data.nbytes else 0
            while got < data.nbytes:
                more = file.readinto(view[got:])
                if not more:
                    raise ValueError(f"{path}: truncated, {got} of {data.nbytes} data bytes "
                                     f"for shape {shape}")
                got += more
            if file.read(1):
                raise ValueError(f"{path}: trailing bytes after the {data.nbytes} data bytes "
                                 f"of shape {shape}")
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({error})") from error
    return data.astype(dtype.newbyteorder("="), copy=False)


def _find(directory, stem):
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"neither {stem}.gz nor {stem} is in {directory}")


def _load_idx_pair(directory, subfolder, split):
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = data_dir() / subfolder if directory is None else Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder")
    image_path, label_path = (_find(directory, stem) for stem in _FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{image_path}: expected uint8 images (n, 28, 28) (magic "
                         f"0x00000803), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{label_path}: expected uint8 labels (n,) (magic 0x00000801), "
                         f"got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{image_path} holds {len(images)} images but {label_path} holds "
                         f"{len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{label_path}: labels must be 0..9, found {labels.max()}")
    return images, labels


def load_mnist(directory=None, split="train"):
    """MNIST digits: (images uint8 (n, 28, 28), labels uint8 (n,)).

    ``directory`` holds the four IDX files (``.gz`` or uncompressed); default
    ``data_dir() / "mnist"``. ``split`` is "train" (60,000) or "test" (10,000).
    """
    return _load_idx_pair(directory, "mnist", split)


def load_fashion_mnist(directory=None, split="train"):
    """Fashion-MNIST, the same layout as :func:`load_mnist`; default folder
    ``data_dir() / "fashion-mnist"``."""
    return _load_idx_pair(directory, "fashion-mnist", split)


def make_xo(n, size=9, seed=None, noise=0.02):
    """The X-versus-O images of the CNN tutorials, pixels +1 (ink) and -1.

    Each image draws an X (two diagonals) or an O (a ring) in a square box of
    random side and position, with stroke thickness 1 or 2 (2 only in boxes of
    side 7 or more), then flips each pixel with probability ``noise``.

    Returns (images float32 (n, 1, size, size), labels int64 (n,)) with
    label 0 = X and 1 = O, balanced and shuffled.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 5:
        raise ValueError(f"size must be an int >= 5, got {size!r}")
    if not 0 <= noise < 0.5:
        raise ValueError(f"noise must be in [0, 0.5), got {noise!r}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    images = np.full((n, 1, size, size), -1.0, dtype=np.float32)
    rows, cols = np.mgrid[0:size, 0:size]
    for i, label in enumerate(labels):
        side = int(rng.integers(5, size + 1))
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        thickness = int(rng.integers(1, 3)) if side >= 7 else 1
        u, v = rows - top, cols - left
        inside = (u >= 0) & (u < side) & (v >= 0) & (v < side)
        if label == 0:
            ink = (np.abs(u - v) < thickness) | (np.abs(u + v - (side - 1)) < thickness)
        else:
            radius = (side - 1) / 2
            distance = np.hypot(u - radius, v - radius)
            ink = (distance > radius - thickness) & (distance <= radius + 0.5)
        images[i, 0][inside & ink] = 1.0
    flips = rng.random(images.shape) < noise
    images[flips] *= -1
    return images, labels.astype(np.int64)
