"""DomainBed's multi-domain image datasets (PACS, VLCS, OfficeHome, TerraIncognita) for the `paper`
preset of very-large-dropout (VLD fine-tunes on them, leaving one domain out).

Where images come from, in order:
1. `data.path`: a folder in DomainBed's own layout (what `domainbed.scripts.download` writes),
   `<folder>/<domain>/<class>/<image>` (e.g. `PACS/photo/dog/056_0001.jpg`), or its parent;
2. `data_dir/<folder>/` (the CLI's `--data-dir`; `PACS`, `VLCS`, `office_home`, `terra_incognita`);
3. the Hugging Face hub: one `train` split with `image`, `label` and `domain` columns. Only PACS has
   a known hub copy (`flwrlabs/pacs`); for the others pass `--set data.hub_id=OWNER/NAME` of a copy
   with those columns.
Images are resized once to `image_size` x `image_size` (DomainBed's test transform; VLD's 224) and
cached as uint8 .npy arrays, one per domain, keyed by the source and the size.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repro.data.vision import _cached, _hf_offline
from repro.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class DomainBedSpec:
    folder: str  # DomainBed's folder name under its data dir
    domains: tuple[str, ...]  # in DomainBed's environment order (test_env 0..3)
    hub_id: str | None = None


DOMAINBED = {
    "PACS": DomainBedSpec("PACS", ("art_painting", "cartoon", "photo", "sketch"), "flwrlabs/pacs"),
    "VLCS": DomainBedSpec("VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007")),
    "OfficeHome": DomainBedSpec("office_home", ("Art", "Clipart", "Product", "Real World")),
    "TerraIncognita": DomainBedSpec("terra_incognita", ("location_100", "location_38", "location_43", "location_46")),
}

Domains = dict[str, tuple[np.ndarray, np.ndarray]]  # domain -> (uint8 (N, S, S, 3), int64 labels)


def _resize(data: bytes | object, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data)) if isinstance(data, bytes) else data
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))  # type: ignore[union-attr]


def _local_root(spec: DomainBedSpec, path: str | None, data_dir: str | None) -> Path | None:
    candidates = []
    if path:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise UserError(f"data.path {path} is not a directory; give the folder holding {spec.folder}/<domain>/.")
        candidates += [root, root / spec.folder]
    elif data_dir:
        candidates.append(Path(data_dir) / spec.folder)
    for root in candidates:
        if all((root / d).is_dir() for d in spec.domains):
            return root
    if path:
        raise UserError(
            f"data.path {path} holds no {spec.folder}/<domain>/<class>/ folders for {', '.join(spec.domains)}."
        )
    return None


def _read_folder(root: Path, spec: DomainBedSpec, size: int) -> Domains:
    """DomainBed's ImageFolder reading: classes are the sorted class folders (the same in every domain)."""
    classes = sorted({p.name for d in spec.domains for p in (root / d).iterdir() if p.is_dir()})
    index = {c: i for i, c in enumerate(classes)}
    out: Domains = {}
    for d in spec.domains:
        files = sorted(p for p in (root / d).glob("*/*") if p.suffix.lower() in _SUFFIXES)
        if not files:
            raise UserError(f"{root / d} holds no <class>/<image> files.")
        images = np.stack([_resize(p.read_bytes(), size) for p in files])
        out[d] = images, np.array([index[p.parent.name] for p in files], dtype=np.int64)
    return out


def _read_hub(hub_id: str, spec: DomainBedSpec, size: int) -> Domains:
    try:
        import datasets

        if not _hf_offline():
            from huggingface_hub import HfApi

            HfApi().dataset_info(hub_id, timeout=10)  # fail fast instead of load_dataset's retries
        ds = datasets.load_dataset(hub_id, split="train")
    except Exception as e:  # no network, offline without a cached copy, a moved dataset
        raise UserError(
            f"dataset {spec.folder} is not available: no local copy was found and the Hugging Face hub copy "
            f"{hub_id} could not be loaded ({type(e).__name__}); point at DomainBed's folder with "
            f"--set data.path=PATH or --data-dir DIR (holding DIR/{spec.folder}/<domain>/)."
        ) from e
    names = [str(x) for x in ds["domain"]]
    wanted = {d.lower().replace(" ", "_"): d for d in spec.domains}
    labels = np.asarray(ds["label"], dtype=np.int64)
    out: Domains = {}
    for key, d in wanted.items():
        rows = [i for i, n in enumerate(names) if n.lower().replace(" ", "_") == key]
        if not rows:
            raise UserError(f"hub dataset {hub_id} has no domain '{d}' (found {sorted(set(names))}).")
        out[d] = np.stack([_resize(ds[i]["image"], size) for i in rows]), labels[rows]
    return out


def load_domainbed(
    name: str,
    path: str | None = None,
    cache_dir: str | None = ".cache/repro",
    image_size: int = 224,
    hub_id: str | None = None,
    data_dir: str | None = None,
) -> Domains:
    """Every domain of a DomainBed dataset as (images, labels), images resized to image_size."""
    if name not in DOMAINBED:
        raise UserError(f"dataset {name}: choose one of {', '.join(DOMAINBED)}.")
    spec = DOMAINBED[name]
    root = _local_root(spec, path, data_dir)
    source = str(root.resolve()) if root is not None else (hub_id or spec.hub_id)
    if source is None:
        raise UserError(
            f"dataset {name} has no known Hugging Face copy and no local copy was found; point at DomainBed's "
            f"folder with --set data.path=PATH or --data-dir DIR, or give --set data.hub_id=OWNER/NAME."
        )
    key = hashlib.sha256(f"{source}|{image_size}".encode()).hexdigest()[:12]
    out: Domains = {}
    loaded: Domains | None = None
    for d in spec.domains:
        cache = (
            Path(cache_dir) / "domainbed" / f"{name}-{d.replace(' ', '_')}-{image_size}-{key}" if cache_dir else None
        )

        def build(d: str = d) -> tuple[np.ndarray, np.ndarray]:
            nonlocal loaded
            if loaded is None:  # one pass over the source fills every domain
                loaded = (
                    _read_folder(root, spec, image_size) if root is not None else _read_hub(source, spec, image_size)
                )
            return loaded[d]

        out[d] = _cached(cache, build)
    return out
