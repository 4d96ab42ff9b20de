"""Datasets for the experiments, kept in memory as uint8 tensors; normalisation and augmentation
run batched on the training device (per-image PIL transforms made 2-core CPU training wait on
data loading).

    load("mnist" | "fashion-mnist" | "cifar10", train=True, root=None, download=False) -> ImageSet
    synthetic(...) -> ImageSet                    a learnable toy set for tests
    stratified_subset(images, size, seed)         equal counts per class
    Loader(images, batch_size, ...)               shuffled, normalised, augmented batches

The data root is `root`, else $CNNEXT_DATA, else ./data. MNIST and Fashion-MNIST use
torchvision's layout (ROOT/MNIST/raw, ROOT/FashionMNIST/raw). CIFAR-10 is read from torchvision's
ROOT/cifar-10-batches-py or, failing that, from the image-folder export
ROOT/cifar-10-images/{train,test}/<class>/*.png|jpg (as ../shared/data provides it), decoded once
and cached as tensors under $CNNEXT_CACHE (default ~/.cache/cnnext), since the data root may be
read-only.
"""

import dataclasses
import hashlib
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ._files import atomic_path

__all__ = ["DATASETS", "ImageSet", "Loader", "data_root", "load", "stratified_subset", "synthetic"]


@dataclass(frozen=True)
class DatasetSpec:
    channels: int
    size: int
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # whether training augments by default
    # What augmentation keeps a label: crops from the image zero-padded by crop_padding pixels on
    # every side, and horizontal flips only where a mirrored image is still of its class.
    crop_padding: int
    flips: bool


DATASETS = {
    # A mirrored 2, 3, 4, 5, 7 or 9 is not that digit: crops only, shifts of up to 2 pixels (the
    # digits are centred in 20 of the 28 pixels, so a shift never cuts much of one off).
    "mnist": DatasetSpec(1, 28, 10, (0.1307,), (0.3081,), augment=False, crop_padding=2, flips=False),
    "fashion-mnist": DatasetSpec(1, 28, 10, (0.2860,), (0.3530,), augment=False, crop_padding=4, flips=True),
    "cifar10": DatasetSpec(
        3,
        32,
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        augment=True,
        crop_padding=4,
        flips=True,
    ),
}


@dataclass
class ImageSet:
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # The augmentation its labels survive (DatasetSpec): crops from the image zero-padded by
    # crop_padding pixels, and horizontal flips where `flips`.
    crop_padding: int = 4
    flips: bool = True

    def __len__(self) -> int:
        return self.labels.numel()


def data_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("CNNEXT_DATA") or "data")


def _missing(name: str, root: Path, expected: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} not found under {root.resolve()}: expected {expected}. Point --data-dir or CNNEXT_DATA at a "
        "folder that has it, or pass download=True (--download) where the internet is reachable."
    )


def load(
    name: str, train: bool = True, root: str | os.PathLike | None = None, download: bool = False
) -> ImageSet:
    """The train or test split of dataset `name` as uint8 tensors."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    spec, root = DATASETS[name], data_root(root)
    if name in ("mnist", "fashion-mnist"):
        import torchvision

        cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        _check_idx_files(root / cls.__name__ / "raw", "train" if train else "t10k")
        try:
            ds = cls(str(root), train=train, download=download)
        except RuntimeError as error:
            raise _missing(name, root, f"{cls.__name__}/raw/*-ubyte (torchvision's layout)") from error
        return _image_set(ds.data.unsqueeze(1).contiguous(), ds.targets.long(), list(ds.classes), spec)
    return _load_cifar10(root, train, download, spec)


def _idx_count(path: Path, magic: int, item_shape: tuple[int, ...]) -> int:
    """The item count of an idx file (MNIST's format), after checking its header and size."""
    size = path.stat().st_size
    header = 4 * (2 + len(item_shape))
    with path.open("rb") as f:
        fields = struct.unpack(f">{2 + len(item_shape)}I", f.read(header)) if size >= header else None
    if fields is None or fields[0] != magic or tuple(fields[2:]) != item_shape:
        expected = f"magic {magic} and items of shape {item_shape}"
        got = (
            "a file too short for a header"
            if fields is None
            else f"magic {fields[0]}, item shape {fields[2:]}"
        )
        raise ValueError(f"{path} is not a valid idx file: expected {expected}, got {got}")
    count = fields[1]
    expected_size = header + count * math.prod(item_shape)
    if size != expected_size:
        raise ValueError(
            f"{path} is damaged: its header announces {count} items ({expected_size} bytes), "
            f"the file has {size} bytes"
        )
    return count


def _check_idx_files(raw: Path, split: str) -> None:
    """Validate an MNIST-layout split before torchvision reads it (torchvision's own checks are bare
    asserts): magic numbers, item shapes, file sizes, and as many labels as images. Errors name the
    file and the way out; missing files are left to the loader's "not found" message."""
    images, labels = raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte"
    if not (images.is_file() and labels.is_file()):
        return
    way_out = " (replace the file, e.g. with ../shared/data/prepare.sh or --download, then run again)"
    try:
        n_images, n_labels = _idx_count(images, 2051, (28, 28)), _idx_count(labels, 2049, ())
    except ValueError as error:
        raise ValueError(f"{error}{way_out}") from None
    if n_images != n_labels:
        raise ValueError(f"{images} holds {n_images} images but {labels} holds {n_labels} labels{way_out}")


def _load_cifar10(root: Path, train: bool, download: bool, spec: DatasetSpec) -> ImageSet:
    import torchvision

    folder = root / "cifar-10-images" / ("train" if train else "test")
    if (root / "cifar-10-batches-py").is_dir() or (download and not folder.is_dir()):
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return _image_set(images, torch.tensor(ds.targets), list(ds.classes), spec)
    if not folder.is_dir():
        raise _missing(
            "cifar10", root, "cifar-10-batches-py/ or cifar-10-images/{train,test}/<class>/*.jpg|png"
        )
    images, labels, classes = _cached_image_folder(folder)
    return _image_set(images, labels, classes, spec)


def _image_set(images: Tensor, labels: Tensor, classes: list[str], spec: DatasetSpec) -> ImageSet:
    return ImageSet(images, labels, classes, spec.mean, spec.std, spec.crop_padding, spec.flips)


def _cached_image_folder(folder: Path) -> tuple[Tensor, Tensor, list[str]]:
    """Decode an image-folder export once; later calls read the cached tensors."""
    import numpy as np
    from PIL import Image

    def decode(path: Path) -> Tensor:
        with Image.open(path) as image:
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())  # ImageFolder's (and CIFAR's) order
    files = [
        (path, label)
        for label, c in enumerate(classes)
        for path in sorted((folder / c).iterdir())
        if path.suffix.lower() in (".png", ".jpg", ".jpeg")
    ]
    # The key covers every file's name, class, size and modification time: moving an image between
    # class folders or editing any image makes a new cache entry.
    listing = hashlib.sha1(str(folder.resolve()).encode())
    for path, label in files:
        stat = path.stat()
        listing.update(f"\n{path.relative_to(folder)}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    cache = (
        Path(os.environ.get("CNNEXT_CACHE") or Path.home() / ".cache" / "cnnext")
        / f"{folder.name}-{listing.hexdigest()[:16]}.pt"
    )
    if cache.exists():
        try:
            saved = torch.load(cache, weights_only=True)
            images, labels, classes = saved["images"], saved["labels"], saved["classes"]
            if images.dtype != torch.uint8 or images.shape[0] != len(files) or labels.shape != (len(files),):
                raise ValueError(f"it holds {tuple(images.shape)} images for {len(files)} files")
            return images, labels, classes
        except Exception as error:  # any damage: decode again, the images are the truth
            warnings.warn(
                f"decoded-image cache {cache} is damaged ({error}); decoding the images again", stacklevel=2
            )
    images = torch.stack([decode(path) for path, _ in files])
    labels = torch.tensor([label for _, label in files])
    with atomic_path(cache) as tmp:  # an interrupted decode never leaves a half-written cache
        torch.save({"images": images, "labels": labels, "classes": classes}, tmp)
    return images, labels, classes


def synthetic(
    n: int = 512, channels: int = 1, size: int = 28, classes: int = 10, seed: int = 0, pattern_seed: int = 0
) -> ImageSet:
    """A learnable toy set for tests: each class is a fixed random pattern (drawn from
    `pattern_seed`, so train and test sets made with different `seed`s share the classes) plus
    noise drawn from `seed`."""
    templates = torch.rand(
        classes, channels, size, size, generator=torch.Generator().manual_seed(pattern_seed)
    )
    labels = torch.arange(n) % classes
    noise = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1_000_003 + seed))
    images = ((0.7 * templates[labels] + 0.3 * noise) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, [str(c) for c in range(classes)], (0.5,) * channels, (0.25,) * channels)


def stratified_subset(data: ImageSet, size: int, seed: int = 0) -> ImageSet:
    """`size` samples with (as nearly as possible) equal counts per class, chosen at random."""
    if not 0 < size <= len(data):
        raise ValueError(f"subset size must be in [1, {len(data)}], got {size}")
    generator = torch.Generator().manual_seed(seed)
    classes = data.labels.unique()
    chosen = []
    for i, c in enumerate(classes):
        members = (data.labels == c).nonzero().flatten()
        quota = size // len(classes) + (1 if i < size % len(classes) else 0)
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:quota]])
    index = torch.cat(chosen).sort().values
    return dataclasses.replace(data, images=data.images[index], labels=data.labels[index])


class Loader:
    """Batches of (normalised float images, labels) from an ImageSet held on `device`.

    Shuffling uses its own generator (seed + epoch), so a run is reproducible and a resumed run
    sees the same batches. augment=True applies, per image and batched on the device, what the
    image set's labels survive: a random crop of the original size from the image zero-padded by
    data.crop_padding pixels (4 for CIFAR-10, 2 for MNIST), then, where data.flips (not for
    MNIST's digits), a horizontal flip with probability 1/2.

    Data-parallel training (rank, world_size): `batch_size` stays the global batch. Every rank
    draws the same permutation and, from each global batch, takes every world_size-th sample
    starting at its rank, as torch's DistributedSampler deals indices; a last batch that does not
    divide evenly is topped up from the start of the permutation (DistributedSampler's padding),
    so every rank gets an equal share and DDP's gradient mean is the global batch's mean. The
    augmentation is drawn for the whole global batch and each rank applies its part, so the
    samples seen do not depend on the number of ranks.

    memory_format: the layout of the image batches (torch.channels_last for a model trained in
    channels_last, whose convolutions then need no layout copies).
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size % world_size:
            raise ValueError(f"the global batch size {batch_size} must divide evenly over {world_size} ranks")
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.crop_padding, self.flips = data.crop_padding, data.flips
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self.rank, self.world_size = rank, world_size
        self.memory_format = memory_format

    def __len__(self) -> int:
        """Batches per epoch (global batches: the same on every rank)."""
        n = self.labels.numel()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        n = self.labels.numel()
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            if self.world_size > 1 and index.numel() % self.world_size:  # top up the last batch
                index = torch.cat([index, order[: self.world_size - index.numel() % self.world_size]])
            crop = (
                _crop_flip_draw(index.numel(), generator, self.crop_padding, self.flips)
                if self.augment
                else None
            )
            mine = slice(self.rank, None, self.world_size)
            index = index[mine].to(self.images.device)
            images = self.images[index]
            if crop is not None:
                images = _crop_flip(images, *(c[mine] for c in crop), self.crop_padding)
            images = (images.float() / 255 - self.mean) / self.std
            yield images.contiguous(memory_format=self.memory_format), self.labels[index]


def _crop_flip_draw(n: int, generator: torch.Generator, padding: int = 4, flips: bool = True):
    """Per image: vertical and horizontal crop offsets in [0, 2 padding] and whether to flip (never,
    where not `flips`)."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5 if flips else torch.zeros(n, dtype=torch.bool)
    return dy, dx, flip


def _crop_flip(images: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, padding: int = 4) -> Tensor:
    n, _, h, w = images.shape
    dy, dx, flip = (t.to(images.device) for t in (dy, dx, flip))
    padded = F.pad(images, (padding,) * 4)
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (n, h)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return (
        padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    )


def random_crop_flip(
    images: Tensor, generator: torch.Generator, padding: int = 4, flips: bool = True
) -> Tensor:
    """Per image: a random crop of the original size from the image zero-padded by `padding`
    pixels, then, where `flips`, a horizontal flip with probability 1/2. Batched gathers, no
    per-image Python loop."""
    return _crop_flip(images, *_crop_flip_draw(images.shape[0], generator, padding, flips), padding)
