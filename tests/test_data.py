"""cnnext.data: in-memory uint8 datasets, stratified subsets, batched augmentation, and the
opt-in real-data checks (run when CNNEXT_DATA points at a prepared data root)."""

import os

import pytest
import torch

from cnnext import data


def test_synthetic_set_shapes_and_labels():
    ds = data.synthetic(n=50, channels=3, size=16, classes=5)
    assert ds.images.shape == (50, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [i % 5 for i in range(50)]


def test_stratified_subset_balances_classes_and_is_seeded():
    ds = data.synthetic(n=1000, classes=10)
    sub = data.stratified_subset(ds, 95, seed=3)
    assert len(sub) == 95
    assert sorted(torch.bincount(sub.labels).tolist()) == [9] * 5 + [10] * 5
    assert torch.equal(sub.images, data.stratified_subset(ds, 95, seed=3).images)
    assert not torch.equal(sub.images, data.stratified_subset(ds, 95, seed=4).images)
    with pytest.raises(ValueError, match=r"subset size must be in \[1, 1000\]"):
        data.stratified_subset(ds, 0)


def test_loader_visits_every_sample_once_per_epoch_reproducibly():
    ds = data.synthetic(n=103, classes=10)
    ds.labels = torch.arange(103)  # make every sample identifiable
    loader = data.Loader(ds, batch_size=10, shuffle=True, seed=1)
    seen = torch.cat([labels for _, labels in loader])
    assert sorted(seen.tolist()) == list(range(103)) and len(loader) == 11
    again = torch.cat([labels for _, labels in data.Loader(ds, batch_size=10, shuffle=True, seed=1)])
    assert torch.equal(seen, again)
    loader.set_epoch(1)
    assert not torch.equal(seen, torch.cat([labels for _, labels in loader]))


def test_loader_normalises_with_dataset_statistics():
    ds = data.synthetic(n=8, channels=1)
    images, _ = next(iter(data.Loader(ds, batch_size=8)))
    expected = (ds.images.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(images, expected)


@pytest.mark.parametrize("augment", [False, True])
def test_loader_hands_out_batches_in_the_memory_format_asked_for(augment):
    ds = data.synthetic(n=16, channels=3, size=8)
    plain = data.Loader(ds, batch_size=8, augment=augment, seed=2)
    nhwc = data.Loader(ds, batch_size=8, augment=augment, seed=2, memory_format=torch.channels_last)
    for (a, la), (b, lb) in zip(plain, nhwc, strict=True):
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
        assert not b.is_contiguous()  # really NHWC, not a layout both formats accept
        assert torch.equal(a, b) and torch.equal(la, lb)  # the same values


def crop_kind(cropped: torch.Tensor, original: torch.Tensor, padding: int) -> str | None:
    """Whether `cropped` is a crop of the original's size from the original zero-padded by
    `padding` pixels ("shift"), one from its mirror image ("mirror"), or neither (None)."""
    size, span = original.shape[-1], range(2 * padding + 1)
    for kind, source in (("shift", original), ("mirror", original.flip(-1))):
        padded = torch.nn.functional.pad(source, (padding,) * 4)
        if any(torch.equal(cropped, padded[..., y : y + size, x : x + size]) for y in span for x in span):
            return kind
    return None


@pytest.mark.parametrize("padding, flips", [(4, True), (2, False), (1, True)])
def test_random_crop_flip_moves_pixels_only_within_padding(padding, flips):
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = data.random_crop_flip(images, torch.Generator().manual_seed(0), padding, flips)
    assert out.shape == images.shape and out.dtype == torch.uint8
    # Every output is some shift (|dy|, |dx| <= padding, zero fill) of the image or, only where
    # flips are allowed, of its mirror.
    kinds = [crop_kind(cropped, original, padding) for original, cropped in zip(images, out, strict=True)]
    assert None not in kinds and ("mirror" in kinds) == flips
    assert not torch.equal(out, images)
    assert (kinds.count("mirror") > 10) == flips  # about half of 64 where flips are drawn, none otherwise


def test_loader_augments_each_set_as_its_labels_allow():
    """MNIST's digits are shifted by at most 2 pixels and never mirrored; CIFAR-10's images are
    shifted by up to 4 and mirrored about half the time."""
    assert (data.DATASETS["mnist"].crop_padding, data.DATASETS["mnist"].flips) == (2, False)
    assert (data.DATASETS["cifar10"].crop_padding, data.DATASETS["cifar10"].flips) == (4, True)
    for padding, flips in [(2, False), (4, True)]:
        ds = data.synthetic(n=64, channels=1, size=12, seed=5)
        ds.crop_padding, ds.flips = padding, flips
        ds.mean, ds.std = (0.0,), (1 / 255,)  # batches hold the uint8 values as floats
        assert data.stratified_subset(ds, 32).flips == flips  # a subset keeps its set's augmentation
        images, labels = next(iter(data.Loader(ds, batch_size=64, augment=True, seed=3)))
        batch = images.round().to(torch.uint8)
        kinds = [crop_kind(image, source, padding) for source, image in zip(ds.images, batch, strict=True)]
        assert None not in kinds, f"an image is not a crop within {padding} pixels"
        assert ("mirror" in kinds) == flips and kinds.count("shift") > 10
        assert torch.equal(labels, ds.labels)


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist not found under .*MNIST/raw"):
        data.load("mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar10 not found under .*cifar-10-images"):
        data.load("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; available: cifar10, fashion-mnist, mnist"):
        data.load("svhn")


def test_image_folder_is_decoded_once_and_cached(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "root" / "cifar-10-images" / "train"
    expected = []
    for label, name in enumerate(["airplane", "automobile"]):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name / f"{i:04d}.png")
            expected.append((image, label))
    monkeypatch.setenv("CNNEXT_CACHE", str(tmp_path / "cache"))
    first = data.load("cifar10", root=tmp_path / "root")
    assert first.classes == ["airplane", "automobile"] and first.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(torch.equal(first.images[i], image) for i, (image, _) in enumerate(expected))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    second = data.load("cifar10", root=tmp_path / "root")
    assert torch.equal(first.images, second.images)


REAL = pytest.mark.skipif(
    not os.environ.get("CNNEXT_DATA"), reason="CNNEXT_DATA not set (opt-in real-data test)"
)


@REAL
def test_real_mnist_matches_the_published_statistics():
    train, test = data.load("mnist", train=True), data.load("mnist", train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert (train.crop_padding, train.flips) == (2, False)  # digits are not mirrored
    pixels = train.images.float() / 255
    assert abs(pixels.mean().item() - 0.1307) < 1e-3 and abs(pixels.std().item() - 0.3081) < 1e-3
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@REAL
def test_real_cifar10_image_folder_matches_the_published_statistics(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNEXT_CACHE", str(tmp_path))
    train = data.load("cifar10", train=True)
    assert train.images.shape == (50000, 3, 32, 32) and torch.bincount(train.labels).tolist() == [5000] * 10
    means = (train.images.float() / 255).mean(dim=(0, 2, 3))
    torch.testing.assert_close(means, torch.tensor([0.4913, 0.4821, 0.4465]), atol=2e-3, rtol=0)
