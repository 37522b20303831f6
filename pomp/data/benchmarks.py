"""Where the zero-shot benchmark datasets live on disk, and how their test sets are read.

All datasets sit under one data root, laid out as CoOp's DATASETS.md describes (the layout
CoOp, CoCoOp, MaPLe and POMP evaluate with), except ImageNet-21K-P, which follows the folder
POMP's own code reads (Alibaba-MIIL's processed winter-21 release). `LAYOUTS` below is the
one table of these facts; `expected_paths` says, per dataset, what must exist.

| key | folder under DATA | images | test split / classes |
|---|---|---|---|
| imagenet | imagenet/ | images/val/<wnid>/ | 1,000 classes, CLIP's names (open_clip) |
| caltech101 | caltech-101/ | 101_ObjectCategories/ | split_zhou_Caltech101.json |
| oxford_pets | oxford_pets/ | images/ | split_zhou_OxfordPets.json |
| stanford_cars | stanford_cars/ | ./ (cars_test/...) | split_zhou_StanfordCars.json |
| oxford_flowers | oxford_flowers/ | jpg/ | split_zhou_OxfordFlowers.json |
| food101 | food-101/ | images/ | split_zhou_Food101.json |
| fgvc_aircraft | fgvc_aircraft/ | images/<id>.jpg | images_variant_test.txt + variants.txt |
| sun397 | sun397/ | SUN397/ | split_zhou_SUN397.json |
| dtd | dtd/ | images/ | split_zhou_DescribableTextures.json |
| eurosat | eurosat/ | 2750/ | split_zhou_EuroSAT.json |
| ucf101 | ucf101/ | UCF-101-midframes/ | split_zhou_UCF101.json |
| imagenetv2 | imagenetv2/ | imagenetv2-matched-frequency-format-val/<0..999>/ | 1,000 classes |
| imagenet_sketch | imagenet-sketch/ | images/<wnid>/ | 1,000 classes |
| imagenet_a | imagenet-adversarial/ | imagenet-a/<wnid>/ | timm's 200 ImageNet-A synsets |
| imagenet_r | imagenet-rendition/ | imagenet-r/<wnid>/ | timm's 200 ImageNet-R synsets |
| imagenet21k_p | imagenet21k_resized/ | imagenet21k_val/<wnid>/ | timm's 10,450 winter-21 synsets |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pomp.data.folder import LabelledImages, SkippedFiles, list_class_folders, list_image_files, read_split_file
from pomp.prompt import clean_classname

COOP_DATASETS_MD = "CoOp DATASETS.md and datasets/*.py (github.com/KaiyangZhou/CoOp)"

# CoOp's EuroSAT names (datasets/eurosat.py NEW_CNAMES). The released split file already carries
# them; a split file written with the raw folder names is renamed the same way.
EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@dataclass(frozen=True)
class DatasetLayout:
    """One benchmark test set on disk.

    kind:
        "split": CoOp split file `folder/split_file`, images relative to `folder/images`.
        "aircraft": FGVC-Aircraft's own `variants.txt` + `images_variant_test.txt`, `folder/images/<id>.jpg`.
        "wnid_folders": `folder/images/<wnid>/...`, scored over the class list `classes`.
        "index_folders": `folder/images/<i>/...`, i the index into the ImageNet-1K class list.
    classes: which ImageNet class list (`imagenet1k`, `imagenet-a`, `imagenet-r`, `imagenet21k-p`).
    names: where the class names come from (`clip` = open_clip's IMAGENET_CLASSNAMES, `lemma` =
        first WordNet lemma as in pomp.data.imagenet21k); split files carry their own names.
    """

    key: str
    title: str
    kind: str
    folder: str
    images: str
    split_file: str | None = None
    classes: str | None = None
    names: str | None = None
    rename: dict[str, str] = field(default_factory=dict)
    source: str = COOP_DATASETS_MD


LAYOUTS: tuple[DatasetLayout, ...] = (
    DatasetLayout("imagenet", "ImageNet", "wnid_folders", "imagenet", "images/val", classes="imagenet1k", names="clip"),
    DatasetLayout("caltech101", "Caltech101", "split", "caltech-101", "101_ObjectCategories",
                  "split_zhou_Caltech101.json"),
    DatasetLayout("oxford_pets", "OxfordPets", "split", "oxford_pets", "images", "split_zhou_OxfordPets.json"),
    DatasetLayout("stanford_cars", "StanfordCars", "split", "stanford_cars", ".", "split_zhou_StanfordCars.json"),
    DatasetLayout("oxford_flowers", "Flowers102", "split", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    DatasetLayout("food101", "Food101", "split", "food-101", "images", "split_zhou_Food101.json"),
    DatasetLayout("fgvc_aircraft", "FGVCAircraft", "aircraft", "fgvc_aircraft", "images", "images_variant_test.txt"),
    DatasetLayout("sun397", "SUN397", "split", "sun397", "SUN397", "split_zhou_SUN397.json"),
    DatasetLayout("dtd", "DTD", "split", "dtd", "images", "split_zhou_DescribableTextures.json"),
    DatasetLayout("eurosat", "EuroSAT", "split", "eurosat", "2750", "split_zhou_EuroSAT.json", rename=EUROSAT_NAMES),
    DatasetLayout("ucf101", "UCF101", "split", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
    DatasetLayout("imagenetv2", "ImageNet-V2", "index_folders", "imagenetv2",
                  "imagenetv2-matched-frequency-format-val", classes="imagenet1k", names="clip"),
    DatasetLayout("imagenet_sketch", "ImageNet-Sketch", "wnid_folders", "imagenet-sketch", "images",
                  classes="imagenet1k", names="clip"),
    DatasetLayout("imagenet_a", "ImageNet-A", "wnid_folders", "imagenet-adversarial", "imagenet-a",
                  classes="imagenet-a", names="clip"),
    DatasetLayout("imagenet_r", "ImageNet-R", "wnid_folders", "imagenet-rendition", "imagenet-r",
                  classes="imagenet-r", names="clip"),
    DatasetLayout("imagenet21k_p", "ImageNet-21K-P", "wnid_folders", "imagenet21k_resized", "imagenet21k_val",
                  classes="imagenet21k-p", names="lemma",
                  source="POMP's datasets/imagenet21k.py (github.com/amazon-science/prompt-pretraining) and "
                         "Alibaba-MIIL/ImageNet21K processing_instructions.md (winter-21: 10,450 classes)"),
)

LAYOUT_BY_KEY = {layout.key: layout for layout in LAYOUTS}


class DatasetMissing(FileNotFoundError):
    """A benchmark dataset is not on disk; `paths` says where it was looked for."""

    def __init__(self, key: str, paths: list[Path]):
        self.key = key
        self.paths = paths
        super().__init__(f"{key}: not found (looked for {', '.join(str(p) for p in paths)})")


def expected_paths(layout: DatasetLayout, data_root: str | Path) -> list[Path]:
    """What must exist for `layout` to be read: the split/list files and the image folder."""
    base = Path(data_root) / layout.folder
    paths = [base / layout.images]
    if layout.kind == "split":
        paths = [base / layout.split_file, base / layout.images]
    elif layout.kind == "aircraft":
        paths = [base / "variants.txt", base / layout.split_file, base / layout.images]
    return paths


# --- class lists ---------------------------------------------------------------------------------
def imagenet1k_classnames() -> list[str]:
    """CLIP's 1,000 ImageNet names (open_clip), in class-index order = timm's sorted `imagenet_synsets.txt`."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def class_list(which: str, names: str = "clip") -> tuple[list[str], list[str]]:
    """(wnids, names) of an ImageNet class list; `names="clip"` takes CLIP's ImageNet-1K names by wnid."""
    from pomp.data import imagenet21k

    wnids = imagenet21k.synsets(which)
    if names == "lemma":
        return wnids, imagenet21k.classnames(which)
    in1k = dict(zip(imagenet21k.synsets("imagenet1k"), imagenet1k_classnames()))
    unknown = [w for w in wnids if w not in in1k]
    if unknown:
        raise ValueError(f"class list {which!r} has {len(unknown)} synsets outside ImageNet-1K (e.g. {unknown[0]})")
    return wnids, [in1k[w] for w in wnids]


# --- readers -------------------------------------------------------------------------------------
def read_class_folders(root: Path, folder_to_label: dict[str, int], classnames: list[str], name: str) -> LabelledImages:
    """Images of `root/<folder>/...` labelled by `folder_to_label`; the classifier keeps all classes.

    Class folders may be absent (counted in `skipped["classes_without_images"]`); a folder that is
    not in the class list is an error.
    """
    left_out = SkippedFiles()  # hidden files, __MACOSX, links into the tree...: counted (pomp.data.folder)
    folders = list_class_folders(root, left_out)
    unknown = [f for f in folders if f not in folder_to_label]
    if unknown:
        raise ValueError(f"{root}: {len(unknown)} folders are not classes of {name} (e.g. {unknown[0]!r})")
    samples = []
    for folder in sorted(folders, key=folder_to_label.__getitem__):
        label = folder_to_label[folder]
        samples.extend((str(p.relative_to(root)), label) for p in list_image_files(root / folder, left_out, root))
    if not samples:
        raise ValueError(f"{root}: no images found")
    present = len({label for _, label in samples})
    skipped = {"classes_without_images": len(classnames) - present} if present < len(classnames) else {}
    skipped.update(left_out.counts)
    return LabelledImages(root, samples, classnames, name, skipped)


def read_aircraft(base: Path, layout: DatasetLayout) -> LabelledImages:
    """FGVC-Aircraft (variant level, 100 classes) as CoOp reads it: names from `variants.txt`,
    test lines `<image id> <variant name>`, images `images/<id>.jpg`."""
    variants = [ln.strip() for ln in (base / "variants.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    label_of = {v: i for i, v in enumerate(variants)}
    samples = []
    test_file = base / layout.split_file
    for number, line in enumerate(test_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in label_of:
            raise ValueError(f"{test_file}:{number}: variant {variant!r} is not in variants.txt")
        samples.append((f"{image_id}.jpg", label_of[variant]))
    root = base / layout.images
    missing = [rel for rel, _ in samples if not (root / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"{test_file}: {len(missing)} of {len(samples)} test images missing under {root} "
                                f"(e.g. {missing[0]!r})")
    if not samples:
        raise ValueError(f"{test_file}: no test images listed")
    return LabelledImages(root, samples, [clean_classname(v) for v in variants], layout.key)


def load_test_set(layout: DatasetLayout | str, data_root: str | Path) -> LabelledImages:
    """The test set of one benchmark dataset; raises `DatasetMissing` when it is not on disk."""
    layout = LAYOUT_BY_KEY[layout] if isinstance(layout, str) else layout
    paths = expected_paths(layout, data_root)
    if not all(p.exists() for p in paths):
        raise DatasetMissing(layout.key, paths)
    base = Path(data_root) / layout.folder
    image_root = base / layout.images
    if layout.kind == "split":
        images = read_split_file(base / layout.split_file, "test", image_root)
        images.classnames = [clean_classname(layout.rename.get(c, c)) for c in images.classnames]
        images.name = layout.key
        return images
    if layout.kind == "aircraft":
        return read_aircraft(base, layout)
    wnids, names = class_list(layout.classes, layout.names)
    if layout.kind == "index_folders":
        return read_class_folders(image_root, {str(i): i for i in range(len(wnids))}, names, layout.key)
    if layout.kind == "wnid_folders":
        return read_class_folders(image_root, {w: i for i, w in enumerate(wnids)}, names, layout.key)
    raise ValueError(f"{layout.key}: unknown layout kind {layout.kind!r}")
