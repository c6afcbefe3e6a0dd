"""Image readers on generated fixtures (IDX, CIFAR pickles, the JPEG tarball layout), the .npy cache,
the one-sentence error when nothing is reachable, the class splits, ColoredMNIST's statistics, and
(only where /work/shared/data exists) the real files."""

from pathlib import Path

import numpy as np
import pytest
import torch
from vision_fixtures import expected_cifar, write_cifar_jpegs, write_cifar_pickles, write_mnist

from repro.data import vision
from repro.errors import UserError

SHARED = Path("/work/shared/data")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny tensors; on 2 shared cores a second thread only spins


def test_idx_round_trip(tmp_path):
    root = write_mnist(tmp_path / "mnist", n_train=50, n_test=20)
    images, labels = vision.load_images("mnist", "train", str(root), cache_dir=None)
    assert images.shape == (50, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels) == set(range(10))
    test_images, _ = vision.load_images("mnist", "test", str(root), cache_dir=None)
    assert test_images.shape == (20, 28, 28)


def test_idx_rejects_a_bad_magic(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04" + bytes(16))
    with pytest.raises(UserError, match="magic"):
        vision.read_idx(bad)


def test_cifar_pickles_are_read_as_nhwc(tmp_path):
    root = write_cifar_pickles(tmp_path / "c10", per_class_train=5, per_class_test=2)
    images, labels = vision.load_images("cifar10", "train", str(root), cache_dir=None)
    assert images.shape == (50, 32, 32, 3) and np.bincount(labels).tolist() == [5] * 10
    test, test_labels = vision.load_images("cifar10", "test", str(root), cache_dir=None)
    want, want_labels = expected_cifar(2, 20)
    assert np.array_equal(test, want) and np.array_equal(test_labels, want_labels)


def test_cifar_jpeg_tarball_and_extracted_folder(tmp_path):
    root = write_cifar_jpegs(tmp_path / "cifar10_jpg", per_class_train=3, per_class_test=2)
    images, labels = vision.load_images("cifar10", "test", str(root), cache_dir=None)
    want, want_labels = expected_cifar(2, 1)
    assert np.array_equal(images, want) and np.array_equal(labels, want_labels)  # class order = CIFAR's
    # the same files extracted (`tar -xzf`) read the same
    import tarfile

    extracted = tmp_path / "extracted"
    with tarfile.open(root / "CIFAR-10-images-test.tar.gz") as tar:
        tar.extractall(extracted, filter="data")
    again, again_labels = vision.load_images("cifar10", "test", str(extracted), cache_dir=None)
    assert np.array_equal(again, want) and np.array_equal(again_labels, want_labels)


def test_decoded_arrays_are_cached_once(tmp_path, monkeypatch):
    root = write_cifar_jpegs(tmp_path / "cifar10_jpg", per_class_train=2, per_class_test=1)
    cache = tmp_path / "cache"
    first = vision.load_images("cifar10", "train", str(root), str(cache))
    files = sorted(p.name for p in (cache / "vision").iterdir())
    assert len(files) == 2 and all(f.endswith(".npy") for f in files)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(vision, "read_cifar_jpegs", no_decoding)
    second = vision.load_images("cifar10", "train", str(root), str(cache))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_data_dir_is_searched(tmp_path):
    write_cifar_jpegs(tmp_path / "cifar10_jpg", per_class_train=2, per_class_test=1)
    write_mnist(tmp_path / "mnist", n_train=20, n_test=10)
    data_dir = str(tmp_path)
    assert vision.load_images("cifar10", "test", cache_dir=None, data_dir=data_dir)[0].shape == (10, 32, 32, 3)
    assert vision.load_images("mnist", "test", cache_dir=None, data_dir=data_dir)[0].shape == (10, 28, 28)


def test_nothing_reachable_is_one_sentence_naming_the_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network in tests
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # and no cached hub copy
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(UserError) as err:
        vision.load_images("cifar10", "train", cache_dir=str(tmp_path / "cache"))
    msg = str(err.value)
    assert "cifar10" in msg and "uoft-cs/cifar10" in msg and "--data-dir" in msg and "data.path" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")
    with pytest.raises(UserError, match="not a directory"):
        vision.load_images("mnist", "train", str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no mnist train files"):
        vision.load_images("mnist", "train", str(empty))


def test_class_subset_relabels_and_balances():
    labels = np.repeat(np.arange(10), 20)
    images = np.arange(200)[:, None]
    x, y = vision.class_subset(images, labels, (5, 6, 7), per_class=4, seed=0)
    assert np.bincount(y).tolist() == [4, 4, 4]
    assert np.array_equal(labels[x[:, 0]] - 5, y)  # relabelled 5,6,7 -> 0,1,2


def test_augment_keeps_shapes_and_is_a_function_of_the_generator():
    x = torch.randn(6, 3, 32, 32)
    a = vision.augment(x, torch.Generator().manual_seed(1))
    b = vision.augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)


def test_domains_are_styles_of_the_same_images():
    img = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    gray = vision.apply_domain(img, "gray")
    assert (gray[..., 0] == gray[..., 1]).all() and gray.shape == img.shape
    assert np.array_equal(vision.apply_domain(img, "rot90")[:, :, 0], img[:, 0, ::-1])
    low = vision.apply_domain(img, "lowcontrast").astype(float)
    assert low.std() < 0.5 * img.std()
    with pytest.raises(UserError):
        vision.apply_domain(img, "sepia")


def _colored(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    digits = rng.integers(0, 10, n)
    images = rng.integers(1, 256, (n, 28, 28)).astype(np.uint8)  # no blank image: the colour is visible
    return vision.colored_mnist(images, digits, seed=seed, n_train=n - 2000)


def test_colored_mnist_statistics():
    train, test = _colored(12_000)
    assert [e.name for e in train] == ["train0", "train1"] and len(test) == 3
    for env in train + test:
        assert env.x.shape[1:] == (2, 14, 14) and env.y.shape == (len(env.x), 1)
        noise = (env.y[:, 0] != (env.digit < 5).float()).float().mean().item()
        assert abs(noise - 0.25) < 0.03, (env.name, noise)  # 25% label noise
        agree = (env.color == env.y[:, 0].long()).float().mean().item()
        assert abs(agree - (1 - env.flip)) < 0.03, (env.name, agree)  # colour = label, flipped w.p. flip
        kept = env.x.sum(dim=(2, 3)) > 0  # (N, 2): exactly one channel carries the digit
        assert (kept.sum(1) == 1).all() and torch.equal(kept[:, 1].long(), env.color)
    assert [e.flip for e in train] == [0.1, 0.2] and [e.flip for e in test] == [0.9, 0.1, 0.5]
    assert len(train[0].x) == len(train[1].x) == 5000 and len(test[0].x) == 2000


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="needs /work/shared/data/mnist")
def test_real_mnist_and_colored_mnist(tmp_path):
    images, digits = vision.load_images("mnist", "train", str(SHARED / "mnist"), str(tmp_path))
    assert images.shape == (60_000, 28, 28) and np.bincount(digits)[1] == 6742
    train, test = vision.colored_mnist(images, digits, seed=0)
    assert [len(e.x) for e in train] == [25_000, 25_000] and [len(e.x) for e in test] == [10_000] * 3
    for env in train:
        agree = (env.color == env.y[:, 0].long()).float().mean().item()
        assert abs(agree - (1 - env.flip)) < 0.01


@pytest.mark.skipif(not (SHARED / "cifar10_jpg").is_dir(), reason="needs /work/shared/data/cifar10_jpg")
def test_real_cifar10_jpeg_test_split(tmp_path):
    images, labels = vision.load_images("cifar10", "test", str(SHARED / "cifar10_jpg"), str(tmp_path))
    assert images.shape == (10_000, 32, 32, 3) and np.bincount(labels).tolist() == [1000] * 10
    assert 80 < images.mean() < 180  # decoded pixels, not zeros
