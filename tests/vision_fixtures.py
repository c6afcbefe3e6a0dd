"""Tiny image datasets written in the real on-disk layouts, so the readers and every experiment's
smoke preset run without /work/shared (and without the network).

Images are learnable on purpose (`repro.data.vision.class_images`, which the smoke presets' generated
images use too): each class has its own colour and a bright square at its own place, plus noise.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from repro.data.vision import class_images

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 240, n_test: int = 60) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        labels = np.arange(n) % 10
        np.random.default_rng(seed).shuffle(labels)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", class_images(labels, 28, 1, seed))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def write_cifar_pickles(root: Path, per_class_train: int = 30, per_class_test: int = 10) -> Path:
    """`cifar-10-batches-py/`: five training batches and a test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = np.repeat(np.arange(10), per_class_train)
    np.random.default_rng(0).shuffle(train_labels)
    test_labels = np.repeat(np.arange(10), per_class_test)
    for name, labels, seed in [
        *[(f"data_batch_{i + 1}", part, 10 + i) for i, part in enumerate(np.array_split(train_labels, 5))],
        ("test_batch", test_labels, 20),
    ]:
        imgs = class_images(labels, 32, 3, seed)  # (N, 32, 32, 3)
        flat = imgs.transpose(0, 3, 1, 2).reshape(len(labels), -1)  # (N, 3072) channel-major, as CIFAR
        with (folder / name).open("wb") as f:
            pickle.dump({b"data": flat, b"labels": labels.tolist()}, f)
    return root


def write_cifar_jpegs(root: Path, per_class_train: int = 6, per_class_test: int = 3) -> Path:
    """The layout of shared/data/cifar10_jpg: CIFAR-10-images-{train,test}.tar.gz of split/class/NNNN.jpg."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for split, per_class, seed in (("train", per_class_train, 0), ("test", per_class_test, 1)):
        labels = np.repeat(np.arange(10), per_class)
        imgs = class_images(labels, 32, 3, seed)
        with tarfile.open(root / f"CIFAR-10-images-{split}.tar.gz", "w:gz") as tar:
            for i, (img, c) in enumerate(zip(imgs, labels, strict=True)):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")  # lossless, so a test can compare pixels
                data = buf.getvalue()
                info = tarfile.TarInfo(f"{split}/{CLASSES[c]}/{i % per_class:04d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return root


def expected_cifar(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(10), per_class)
    return class_images(labels, 32, 3, seed), labels
