"""Where the zero-shot benchmark datasets live on disk, and how their test sets are read.

All datasets sit under one data root, laid out as CoOp's DATASETS.md describes (the layout
CoOp, CoCoOp, MaPLe and POMP evaluate with), except ImageNet-21K-P, which follows the folder
POMP's own code reads (Alibaba-MIIL's processed winter-21 release). `LAYOUTS` below is the
one table of these facts; `expected_paths` says, per dataset, what must exist.

| key | folder under DATA | images | test split / classes |
|---|---|---|---|
| imagenet | imagenet/ | images/val/<wnid>/ | 1,000 classes, CoOp's classnames.txt (else open_clip's) |
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

from pomp.data.folder import LabelledImages, SkippedFiles, list_class_folders, list_image_files
from pomp.data.names import clean_classname
from pomp.data.splits import read_split_file

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
    names: where the class names come from (`clip` = CoOp's `classnames.txt` when present, see
        `imagenet_names_file`, else open_clip's IMAGENET_CLASSNAMES; `lemma` = first WordNet lemma as in
        pomp.data.imagenet21k); split files carry their own names.
    coop_name: the dataset's name in CoOp's (and POMP's) code, e.g. for its hand-crafted template.
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
    coop_name: str | None = None


LAYOUTS: tuple[DatasetLayout, ...] = (
    DatasetLayout("imagenet", "ImageNet", "wnid_folders", "imagenet", "images/val", classes="imagenet1k", names="clip",
                  coop_name="ImageNet"),
    DatasetLayout("caltech101", "Caltech101", "split", "caltech-101", "101_ObjectCategories",
                  "split_zhou_Caltech101.json", coop_name="Caltech101"),
    DatasetLayout("oxford_pets", "OxfordPets", "split", "oxford_pets", "images", "split_zhou_OxfordPets.json",
                  coop_name="OxfordPets"),
    DatasetLayout("stanford_cars", "StanfordCars", "split", "stanford_cars", ".", "split_zhou_StanfordCars.json",
                  coop_name="StanfordCars"),
    DatasetLayout("oxford_flowers", "Flowers102", "split", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                  coop_name="OxfordFlowers"),
    DatasetLayout("food101", "Food101", "split", "food-101", "images", "split_zhou_Food101.json", coop_name="Food101"),
    DatasetLayout("fgvc_aircraft", "FGVCAircraft", "aircraft", "fgvc_aircraft", "images", "images_variant_test.txt",
                  coop_name="FGVCAircraft"),
    DatasetLayout("sun397", "SUN397", "split", "sun397", "SUN397", "split_zhou_SUN397.json", coop_name="SUN397"),
    DatasetLayout("dtd", "DTD", "split", "dtd", "images", "split_zhou_DescribableTextures.json",
                  coop_name="DescribableTextures"),
    DatasetLayout("eurosat", "EuroSAT", "split", "eurosat", "2750", "split_zhou_EuroSAT.json", rename=EUROSAT_NAMES,
                  coop_name="EuroSAT"),
    DatasetLayout("ucf101", "UCF101", "split", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
                  coop_name="UCF101"),
    DatasetLayout("imagenetv2", "ImageNet-V2", "index_folders", "imagenetv2",
                  "imagenetv2-matched-frequency-format-val", classes="imagenet1k", names="clip",
                  coop_name="ImageNetV2"),
    DatasetLayout("imagenet_sketch", "ImageNet-Sketch", "wnid_folders", "imagenet-sketch", "images",
                  classes="imagenet1k", names="clip", coop_name="ImageNetSketch"),
    DatasetLayout("imagenet_a", "ImageNet-A", "wnid_folders", "imagenet-adversarial", "imagenet-a",
                  classes="imagenet-a", names="clip", coop_name="ImageNetA"),
    DatasetLayout("imagenet_r", "ImageNet-R", "wnid_folders", "imagenet-rendition", "imagenet-r",
                  classes="imagenet-r", names="clip", coop_name="ImageNetR"),
    DatasetLayout("imagenet21k_p", "ImageNet-21K-P", "wnid_folders", "imagenet21k_resized", "imagenet21k_val",
                  classes="imagenet21k-p", names="lemma", coop_name="ImageNet21K",
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


COOP_CLASSNAMES_FILE = "classnames.txt"


def imagenet_names_file(layout: DatasetLayout, data_root: str | Path) -> Path | None:
    """CoOp's `classnames.txt` (`<wnid> <class name>` lines) for an ImageNet-family layout (`names="clip"`).

    CoOp's readers (datasets/imagenet.py, imagenetv2.py, imagenet_sketch.py, imagenet_a.py,
    imagenet_r.py) read the copy in the dataset's own folder, which DATASETS.md has copied from
    `imagenet/classnames.txt`; that copy is used when present, else `imagenet/classnames.txt`.
    None when there is neither (open_clip's built-in names are used).
    """
    if layout.names != "clip":
        return None
    root = Path(data_root)
    for path in (root / layout.folder / COOP_CLASSNAMES_FILE, root / "imagenet" / COOP_CLASSNAMES_FILE):
        if path.is_file():
            return path
    return None


def class_list(layout: DatasetLayout, data_root: str | Path) -> tuple[list[str], list[str], str]:
    """(wnids, names, where the names come from) of an ImageNet-family layout, in label order.

    With a CoOp `classnames.txt` (`imagenet_names_file`) names are taken from it as CoOp does: by
    wnid for class folders, and by line for ImageNet-V2's index folders (label i = line i). Without
    it, CLIP's names from open_clip by wnid. ImageNet-21K-P: timm's synsets and first lemmas.
    """
    from pomp.data import imagenet21k
    from pomp.data.folder import read_names_file

    wnids = imagenet21k.synsets(layout.classes)
    if layout.names == "lemma":
        return wnids, imagenet21k.classnames(layout.classes), (
            "timm imagenet21k_miil_w21_synsets.txt, first lemma of imagenet_synset_to_lemma.txt")
    names_file = imagenet_names_file(layout, data_root)
    if names_file is None:
        mapping = dict(zip(imagenet21k.synsets("imagenet1k"), imagenet1k_classnames()))
        root = Path(data_root)
        source = (f"open_clip IMAGENET_CLASSNAMES (built-in; no {COOP_CLASSNAMES_FILE} in "
                  f"{root / layout.folder} or {root / 'imagenet'})")
    else:
        mapping = read_names_file(names_file, first_synonym=False)
        source = f"CoOp {COOP_CLASSNAMES_FILE}: {names_file}"
        if layout.kind == "index_folders":  # CoOp's imagenetv2.py: label i is the i-th line's class
            if sorted(mapping) != sorted(wnids):
                raise ValueError(f"{names_file}: expected the {len(wnids)} ImageNet-1K synsets, one per line "
                                 f"(found {len(mapping)} entries)")
            return list(mapping), list(mapping.values()), source
    unknown = [w for w in wnids if w not in mapping]
    if unknown:
        where = names_file if names_file is not None else "open_clip's ImageNet-1K names"
        raise ValueError(f"{where}: no name for {len(unknown)} synsets of {layout.key} (e.g. {unknown[0]})")
    return wnids, [mapping[w] for w in wnids], source


def classnames_source(layout: DatasetLayout | str, data_root: str | Path) -> str:
    """Where `load_test_set` takes a dataset's class names from (a file, or a built-in list), in words."""
    layout = LAYOUT_BY_KEY[layout] if isinstance(layout, str) else layout
    base = Path(data_root) / layout.folder
    if layout.kind == "split":
        renamed = " (renamed as CoOp's datasets/eurosat.py NEW_CNAMES)" if layout.rename else ""
        return f"split file {base / layout.split_file}{renamed}"
    if layout.kind == "aircraft":
        return f"{base / 'variants.txt'}"
    return class_list(layout, data_root)[2]


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
    variants = [ln.strip() for ln in (base / "variants.txt").read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    label_of = {v: i for i, v in enumerate(variants)}
    samples = []
    test_file = base / layout.split_file
    for number, line in enumerate(test_file.read_text(encoding="utf-8-sig").splitlines(), start=1):  # a BOM dropped
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
    wnids, names, _ = class_list(layout, data_root)
    if layout.kind == "index_folders":
        return read_class_folders(image_root, {str(i): i for i in range(len(wnids))}, names, layout.key)
    if layout.kind == "wnid_folders":
        return read_class_folders(image_root, {w: i for i, w in enumerate(wnids)}, names, layout.key)
    raise ValueError(f"{layout.key}: unknown layout kind {layout.kind!r}")
