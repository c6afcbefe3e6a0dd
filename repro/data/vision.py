"""Image datasets for the rich-features experiments: MNIST, CIFAR-10/100, ColoredMNIST, and the
disjoint-class and multi-domain splits built from them.

Where images come from, in order:
1. `data.path` (`--set data.path=DIR`): a directory holding one of the layouts below, or `generated`:
   small learnable images made on the spot (the smoke presets: offline, in seconds);
2. `data.data_dir/<folder>/` (the CLI's `--data-dir` sets it): `mnist/`, `cifar10_jpg/`, `cifar10/`,
   `cifar-10-batches-py/`, `cifar100/`, `cifar-100-python/`;
3. the Hugging Face hub (or its cache): `ylecun/mnist`, `uoft-cs/cifar10`, `uoft-cs/cifar100`.
Nothing reachable raises one UserError naming the dataset and the two ways to point at files.

Local layouts understood: MNIST IDX files (`train-images-idx3-ubyte[.gz]`, ...); CIFAR python
pickle batches (`data_batch_1..5`, `test_batch`; CIFAR-100 `train`, `test`); the JPEG layout of
`shared/data/cifar10_jpg` (`CIFAR-10-images-{train,test}.tar.gz` holding `{split}/<class>/NNNN.jpg`,
or those folders extracted). Decoding (JPEG especially) happens once: the arrays are cached as .npy
under `cache_dir`, keyed by the source files' names, sizes and modification times.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from repro.errors import UserError
from repro.files import atomic_write

Arrays = tuple[np.ndarray, np.ndarray]  # (images uint8, labels int64)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class VisionSpec:
    folders: tuple[str, ...]  # looked for under data_dir, in order
    hub_id: str
    image_col: str
    label_col: str


SPECS = {
    "mnist": VisionSpec(("mnist", "MNIST/raw", "MNIST"), "ylecun/mnist", "image", "label"),
    "cifar10": VisionSpec(("cifar10_jpg", "cifar10", "cifar-10-batches-py"), "uoft-cs/cifar10", "img", "label"),
    "cifar100": VisionSpec(("cifar100", "cifar-100-python"), "uoft-cs/cifar100", "img", "fine_label"),
}


# ---- readers of local files ----------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'd or raw): big-endian header, magic 0x0000 <type 0x08> <ndim>, then dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # a damaged .gz
        raise UserError(f"{path} cannot be read ({e}); replace it with an intact copy.") from None
    if len(data) < 4:
        raise UserError(f"{path} is not an IDX file (only {len(data)} bytes).")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}.")
    return arr.reshape(dims)


def _one(root: Path, patterns: list[str]) -> Path | None:
    for pattern in patterns:
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[0]
    return None


def mnist_files(root: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    images = _one(root, [f"{prefix}-images-idx3-ubyte*", f"{prefix}-images.idx3-ubyte*"])
    labels = _one(root, [f"{prefix}-labels-idx1-ubyte*", f"{prefix}-labels.idx1-ubyte*"])
    return (images, labels) if images and labels else None


def read_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    files = mnist_files(root, split)
    if files is None:
        raise UserError(f"{root} holds no MNIST IDX files for split {split} (e.g. train-images-idx3-ubyte.gz).")
    images, labels = read_idx(files[0]), read_idx(files[1])
    return images, labels.astype(np.int64)  # (N, 28, 28) uint8, (N,)


def cifar_pickles(root: Path, name: str, split: str) -> list[Path]:
    for base in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if name == "cifar10":
            files = [base / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [base / "test_batch"]
        else:
            files = [base / split]
        if all(f.is_file() for f in files):
            return files
    return []


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR python batch holds and nothing else: dicts, lists, bytes, strings,
    numbers, and numpy arrays of plain numbers. An ordinary pickle can name any function to call (how
    a planted file runs a command); here the only names are numpy's array and dtype, and they resolve
    to the stand-ins below, which build the array from its raw bytes themselves."""

    def find_class(self, module: str, name: str) -> Any:
        numpy_core = module in (
            "numpy.core.multiarray",
            "numpy._core.multiarray",
            "numpy.core.numeric",
            "numpy._core.numeric",
        )
        allowed = {
            ("numpy", "ndarray"): _PickledArray,
            ("numpy", "dtype"): _PickledDtype,
            ("core", "_reconstruct"): _PickledArray.reconstruct,
            ("core", "_frombuffer"): _PickledArray.frombuffer,
            ("_codecs", "encode"): _latin1,  # how Python 3 writes bytes at pickle protocol 2
        }
        found = allowed.get(("core" if numpy_core else module, name))
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
        return found


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("not part of a CIFAR batch")
    return text.encode("latin1")


class _PickledDtype:
    """Stands in for numpy.dtype while unpickling: plain numbers only (no objects, no fields)."""

    def __init__(self, spec: str | bytes, align: bool = False, copy: bool = False):
        self.dtype = np.dtype(spec.decode("ascii") if isinstance(spec, bytes) else str(spec))
        if self.dtype.kind not in "biuf":
            raise pickle.UnpicklingError(f"dtype {self.dtype} is not part of a CIFAR batch")

    def __setstate__(self, state: tuple) -> None:
        endian = state[1].decode() if isinstance(state[1], bytes) else state[1]
        if any(part is not None for part in state[2:5]):  # subarray, names, fields
            raise pickle.UnpicklingError("a structured dtype is not part of a CIFAR batch")
        if endian in "<>":
            self.dtype = self.dtype.newbyteorder(endian)


class _PickledArray:
    """Stands in for an ndarray while unpickling; `array` is built from the pickled bytes."""

    array: np.ndarray

    @classmethod
    def reconstruct(cls, subtype: Any, shape: Any, typecode: Any) -> _PickledArray:
        return cls()

    @classmethod
    def frombuffer(cls, buf: Any, dtype: _PickledDtype, shape: tuple, order: str) -> _PickledArray:
        new = cls()
        new.__setstate__((1, shape, dtype, order == "F", bytes(buf)))
        return new

    def __setstate__(self, state: tuple) -> None:
        shape, dtype, fortran, raw = state[-4:]  # (version,) shape, dtype, is_fortran, raw data
        if not isinstance(dtype, _PickledDtype) or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("not an array of plain numbers")
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        self.array = flat.reshape(tuple(shape), order="F" if fortran else "C")


def _unwrap(value: Any) -> Any:
    if isinstance(value, _PickledArray):
        return value.array
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def read_cifar_pickles(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for f in files:
        try:
            with f.open("rb") as fh:
                batch = _unwrap(_CifarUnpickler(fh, encoding="bytes").load())
            if not isinstance(batch, dict) or b"data" not in batch:
                raise ValueError("no data array")
        except Exception as e:  # garbage of any kind: unpickling errors are not one type
            why = type(e).__name__
            raise UserError(f"{f} is not a CIFAR python batch ({why}); replace it with an intact copy.") from None
        images.append(np.asarray(batch[b"data"], dtype=np.uint8))
        key = b"labels" if b"labels" in batch else b"fine_labels"
        labels.append(np.asarray(batch[key], dtype=np.int64))
    flat = np.concatenate(images)  # (N, 3072), channel-major rows
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), np.concatenate(labels)  # (N, 32, 32, 3)


def cifar_jpeg_source(root: Path, split: str) -> Path | None:
    """A `*-{split}.tar.gz` archive, or an extracted `{split}/<class>/` folder."""
    tar = _one(root, [f"*-{split}.tar.gz", f"*{split}*.tar.gz"])
    if tar is not None:
        return tar
    folder = root / split
    return folder if folder.is_dir() and any(folder.glob("*/*.jpg")) else None


def _class_index(names: list[str]) -> dict[str, int]:
    """CIFAR-10's canonical order when the folders are its classes, else sorted folder names."""
    if set(names) <= set(CIFAR10_CLASSES):
        return {c: CIFAR10_CLASSES.index(c) for c in names}
    return {c: i for i, c in enumerate(sorted(names))}


def read_cifar_jpegs(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode `<split>/<class>/<name>.jpg` files (from a tar.gz or a folder) in (class, name) order."""

    items: list[tuple[str, str, bytes]] = []
    if source.is_file():
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg", ".png")) and len(parts) >= 2:
                    items.append((parts[-2], parts[-1], tar.extractfile(member).read()))  # type: ignore[union-attr]
    else:
        for path in source.glob("*/*"):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                items.append((path.parent.name, path.name, path.read_bytes()))
    if not items:
        raise UserError(f"{source} holds no <class>/<name>.jpg images.")
    index = _class_index(sorted({c for c, _, _ in items}))
    items.sort(key=lambda it: (index[it[0]], it[1]))
    images = np.stack([_decode_image(b, f"{source}: {c}/{name}") for c, name, b in items])
    return images, np.array([index[c] for c, _, _ in items], dtype=np.int64)  # (N, H, W, 3), (N,)


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """One image file's pixels (H, W, 3), or one UserError naming the file that does not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{where} is not a readable image ({type(e).__name__}); remove or replace it.") from None


# ---- finding a source, caching -------------------------------------------------------------------


def _local_root(name: str, path: str | None, data_dir: str | None) -> Path | None:
    if path:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise UserError(f"data.path {path} is not a directory; give the folder that holds the {name} files.")
        return root
    for folder in SPECS[name].folders if data_dir else ():
        if (Path(data_dir) / folder).is_dir():
            return Path(data_dir) / folder
    return None


def _local_files(name: str, root: Path, split: str) -> list[Path]:
    """The files a local copy of (name, split) is read from, or [] when `root` holds none."""
    if name == "mnist":
        files = mnist_files(root, split)
        return list(files) if files else []
    pickles = cifar_pickles(root, name, split)
    if pickles:
        return pickles
    source = cifar_jpeg_source(root, split)
    return [source] if source is not None else []


def _fingerprint(name: str, split: str, files: list[Path]) -> str:
    parts = [name, split]
    for f in files:
        st = f.stat()
        parts.append(f"{f.resolve()}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, arr)

    atomic_write(path, write)


def _cached(cache: Path | None, build: Callable[[], Arrays]) -> Arrays:
    """Read `<cache>.images.npy` / `.labels.npy`, or build the arrays and write them (atomically)."""
    if cache is None:
        return build()
    img_path, lab_path = (cache.with_name(cache.name + s) for s in (".images.npy", ".labels.npy"))
    if img_path.exists() and lab_path.exists():
        return np.load(img_path), np.load(lab_path)
    images, labels = build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    _save_npy(img_path, images)
    _save_npy(lab_path, labels)
    return images, labels


def _hf_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _missing(name: str, why: str) -> UserError:
    folder = SPECS[name].folders[0]
    return UserError(
        f"dataset {name} is not available: {why}; point at local files with --set data.path=PATH "
        f"or --data-dir DIR (holding DIR/{folder}/)."
    )


def _load_hub(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The hub copy (or its local cache); any failure becomes one UserError, without long retries."""
    spec = SPECS[name]
    try:
        import datasets

        if not _hf_offline():
            from huggingface_hub import HfApi

            HfApi().dataset_info(spec.hub_id, timeout=10)  # fail fast: load_dataset retries when offline
        ds = datasets.load_dataset(spec.hub_id, split=split)
    except Exception as e:  # no network, offline without a cached copy, a moved dataset
        raise _missing(
            name,
            f"no local copy was found and the Hugging Face hub copy {spec.hub_id} "
            f"could not be loaded ({type(e).__name__})",
        ) from e
    images = np.stack([np.asarray(img) for img in ds[spec.image_col]])
    if images.ndim == 4 and images.shape[-1] == 4:
        images = images[..., :3]
    return images.astype(np.uint8), np.asarray(ds[spec.label_col], dtype=np.int64)


GENERATED = "generated"  # data.path value: learnable images made here (smoke presets: offline, seconds)
GENERATED_PER_CLASS = {"mnist": (24, 6), "cifar10": (30, 10), "cifar100": (30, 10)}  # (train, test)


def class_images(labels: np.ndarray, size: int, channels: int, seed: int) -> np.ndarray:
    """uint8 (N, size, size[, channels]) images whose look depends on the label, learnable on purpose:
    each class has its own colour and a bright square at its own place, plus noise, so a few SGD
    steps already separate the classes (smoke presets and the readers' test fixtures)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    img = rng.integers(0, 60, (n, size, size, channels)).astype(np.float32)
    for c in np.unique(labels):
        idx = labels == c
        colour = 60 + 150 * np.array([(c * 37 % 10) / 10, (c * 53 % 10) / 10, (c * 71 % 10) / 10])[:channels]
        img[idx] += colour
        r, q = divmod(int(c) % 12, 4)  # 12 places: classes beyond 12 (CIFAR-100) differ by colour
        y0, x0 = (r * size) // 3, (q * size) // 4
        img[idx, y0 : y0 + size // 4, x0 : x0 + size // 4] = 250
    img = img.clip(0, 255).astype(np.uint8)
    return img[..., 0] if channels == 1 else img


def generated_images(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A small generated stand-in for a dataset split, in its shapes and class count."""
    n_class = 100 if name == "cifar100" else 10
    per_class = GENERATED_PER_CLASS[name][SPLITS.index(split)]  # MNIST: 240 training digits (Bonsai's smoke uses 200)
    seed = {"train": 0, "test": 1}[split] + 10 * list(SPECS).index(name)
    labels = np.repeat(np.arange(n_class), per_class)
    np.random.default_rng(seed).shuffle(labels)
    size, channels = (28, 1) if name == "mnist" else (32, 3)
    return class_images(labels, size, channels, seed), labels.astype(np.int64)


def load_images(
    name: str, split: str, path: str | None = None, cache_dir: str | None = ".cache/repro", data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a dataset split: uint8 (N, 28, 28) for MNIST, (N, 32, 32, 3) for CIFAR;
    from `path` (or generated images when it is "generated"), else `data_dir/<folder>/`, else the hub
    (module docstring)."""
    if name not in SPECS:
        raise UserError(f"data.dataset={name}: choose one of {', '.join(SPECS)}.")
    if split not in SPLITS:
        raise UserError(f"split '{split}': choose one of {', '.join(SPLITS)}.")
    if path == GENERATED:
        return generated_images(name, split)
    root = _local_root(name, path, data_dir)
    cache_root = Path(cache_dir) / "vision" if cache_dir else None
    if root is not None:
        files = _local_files(name, root, split)
        if not files:
            if path:
                raise UserError(f"data.path {path} holds no {name} {split} files in a layout this reader knows.")
        else:
            cache = cache_root / f"{name}-{split}-{_fingerprint(name, split, files)}" if cache_root else None
            if name == "mnist":
                return _cached(cache, lambda: read_mnist(root, split))
            if files[0].name.endswith(".tar.gz") or files[0].is_dir():
                return _cached(cache, lambda: read_cifar_jpegs(files[0]))
            return _cached(cache, lambda: read_cifar_pickles(files))
    cache = cache_root / f"{name}-{split}-hub" if cache_root else None
    return _cached(cache, lambda: _load_hub(name, split))


# ---- derived datasets ----------------------------------------------------------------------------


def class_subset(
    images: np.ndarray, labels: np.ndarray, classes: tuple[int, ...], per_class: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Keep `classes` (relabelled 0..k-1 in the given order), optionally `per_class` random examples of each.

    The disjoint-class transfer task: pretrain on CIFAR-10 classes (0..4), probe on (5..9), and back."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in classes:
        idx = np.nonzero(labels == c)[0]
        if per_class is not None and per_class < len(idx):
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        keep.append(idx)
    order = np.concatenate(keep)
    remap = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    remap[list(classes)] = np.arange(len(classes))
    return images[order], remap[labels[order]]


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def to_tensor(
    images: np.ndarray,
    mean: tuple[float, ...] = CIFAR_MEAN,
    std: tuple[float, ...] = CIFAR_STD,
    channels_last: bool = True,
) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float (N, C, H, W), by default in channels-last memory
    (the NHWC bytes as they come from the array cache, no copy to planar layout: oneDNN's CPU
    convolutions and cuDNN's tensor-core kernels both prefer it; see reports/LOG.md for the timing)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)  # (N, H, W, C)
    x = (x - torch.tensor(mean)) / torch.tensor(std)  # per channel, broadcast over the last dim
    x = x.permute(0, 3, 1, 2)  # (N, C, H, W) view with channels-last strides
    return x if channels_last else x.contiguous()


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The usual CIFAR augmentation on a batch: random crop after `pad` zero padding, random flip.

    One gather for the whole batch (no per-image Python loop); the draws (dy, dx, flip) come from
    `gen` in that order, and the result keeps the input's memory format."""
    B, _, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2 pad, W + 2 pad)
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    flip = torch.rand(B, generator=gen) < 0.5
    rows = dy[:, None] + torch.arange(H)  # (B, H) source rows of each output row
    cols = dx[:, None] + torch.arange(W)  # (B, W) source columns
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a horizontal flip reads the columns backwards
    out = padded[torch.arange(B)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    out = out.permute(0, 3, 1, 2)  # (B, C, H, W), channels-last strides
    return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


# ---- multi-domain shift (very large dropout) -----------------------------------------------------

DOMAINS = ("photo", "gray", "rot90", "lowcontrast")


def apply_domain(images: np.ndarray, domain: str) -> np.ndarray:
    """A style of the same uint8 (N, H, W, 3) images: a cheap stand-in for DomainBed's domains."""
    if domain == "photo":
        return images
    if domain == "gray":
        lum = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (N, H, W)
        return np.repeat(lum[..., None], 3, axis=-1).round().astype(np.uint8)
    if domain == "rot90":
        return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)))
    if domain == "lowcontrast":  # squeeze to 40% contrast around mid-grey, with a warm tint
        out = 128 + 0.4 * (images.astype(np.float32) - 128) + np.array([20.0, 5.0, -20.0], dtype=np.float32)
        return out.clip(0, 255).round().astype(np.uint8)
    raise UserError(f"domain '{domain}': choose among {', '.join(DOMAINS)}.")


# ---- ColoredMNIST (RFC / IRM) --------------------------------------------------------------------


@dataclass
class Environment:
    name: str
    x: torch.Tensor  # (N, 2, 14, 14) float in [0, 1]
    y: torch.Tensor  # (N, 1) float noisy binary label
    digit: torch.Tensor  # (N,) the MNIST digit (for checks)
    color: torch.Tensor  # (N,) which channel is kept
    flip: float  # probability that colour disagrees with the label


def make_environment(
    images: np.ndarray, digits: np.ndarray, flip: float, label_noise: float, rng: np.random.Generator, name: str
) -> Environment:
    """RFC's `make_environment`: 14x14 (2x subsample), label = digit < 5 flipped with prob. label_noise,
    colour = label flipped with prob. `flip`, the other colour channel zeroed."""
    small = images.reshape(-1, 28, 28)[:, ::2, ::2].astype(np.float32) / 255  # (N, 14, 14)
    labels = (digits < 5).astype(np.float32)
    labels = np.abs(labels - (rng.random(len(labels)) < label_noise))
    colors = np.abs(labels - (rng.random(len(labels)) < flip)).astype(np.int64)
    x = np.stack([small, small], axis=1)  # (N, 2, 14, 14)
    x[np.arange(len(x)), 1 - colors] = 0
    return Environment(
        name,
        torch.from_numpy(x),
        torch.from_numpy(labels[:, None]),
        torch.from_numpy(digits),
        torch.from_numpy(colors),
        flip,
    )


def colored_mnist(
    images: np.ndarray,
    digits: np.ndarray,
    seed: int,
    label_noise: float = 0.25,
    train_flips: tuple[float, float] = (0.1, 0.2),
    test_flips: tuple[float, ...] = (0.9, 0.1, 0.5),
    n_train: int = 50_000,
    per_env: int | None = None,
) -> tuple[list[Environment], list[Environment]]:
    """ColoredMNIST exactly as RFC's `coloredmnist(0.25, 0.1, 0.2)`: MNIST train images 0..n_train-1
    shuffled into two environments (even / odd positions, colour flip 0.1 / 0.2); images n_train.. as
    three test environments (flip 0.9, 0.1, 0.5; OoD accuracy = the minimum over them). `per_env`
    keeps only the first examples of each training environment (the cpu preset)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_train)
    tr_img, tr_dig = images[:n_train][order], digits[:n_train][order]
    te_img, te_dig = images[n_train:], digits[n_train:]
    train = []
    for k, flip in enumerate(train_flips):
        img, dig = tr_img[k :: len(train_flips)][:per_env], tr_dig[k :: len(train_flips)][:per_env]
        train.append(make_environment(img, dig, flip, label_noise, rng, f"train{k}"))
    test = [make_environment(te_img, te_dig, f, label_noise, rng, f"test{f:g}") for f in test_flips]
    return train, test
