"""ImageNet class lists shipped with timm (`timm/data/_info`): the 10,450 winter-21 ImageNet-21K-P
synsets POMP pre-trains on, the full 21,841, and WordNet lemmas as class names. Offline."""

from __future__ import annotations

from pathlib import Path

from pomp.data.names import clean_classname, first_lemma, names_mapping_from, read_names_file

LISTS = {
    "imagenet21k-p": "imagenet21k_miil_w21_synsets.txt",  # ImageNet-21K-P winter-21: 10,450 classes
    "imagenet22k": "imagenet22k_synsets.txt",  # full ImageNet-21K (fall-11): 21,841 classes
    "imagenet1k": "imagenet_synsets.txt",
    "imagenet-a": "imagenet_a_synsets.txt",
    "imagenet-r": "imagenet_r_synsets.txt",
}


def _info_dir() -> Path:
    import timm.data

    return Path(timm.data.__file__).parent / "_info"


def synsets(which: str = "imagenet21k-p") -> list[str]:
    """WordNet ids of a class list, in its canonical order."""
    if which not in LISTS:
        raise ValueError(f"unknown class list {which!r}; choose from {sorted(LISTS)}")
    return (_info_dir() / LISTS[which]).read_text().split()


def synset_lemmas() -> dict[str, str]:
    """WordNet id -> lemma list as timm ships it ("tabby, tabby cat")."""
    mapping = {}
    for line in (_info_dir() / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            key, lemmas = line.split("\t", 1)
            mapping[key] = lemmas.strip()
    return mapping


def classnames(which: str = "imagenet21k-p") -> list[str]:
    """First WordNet lemma of each synset, in the list's order (the names POMP trains with)."""
    lemmas = synset_lemmas()
    return [clean_classname(first_lemma(lemmas[s])) for s in synsets(which)]


def names_mapping(which: str = "imagenet21k-p") -> dict[str, str]:
    """WordNet id -> first lemma, ordered as the list: a names mapping for `scan_class_folders`.

    Read like a names file (`pomp.data.names`): classes whose names coincide are listed in one warning."""
    lemmas = synset_lemmas()
    return names_mapping_from(((s, lemmas[s]) for s in synsets(which)), f"class list {which!r}")


def resolve_names(spec: str | None) -> dict[str, str] | None:
    """A `--names` value -> folder -> class name mapping: a built-in list name (`imagenet21k-p`, see LISTS)
    or a names file (`folder<TAB>name` lines); None stays None (folder names become class names)."""
    if not spec:
        return None
    if spec in LISTS:
        return names_mapping(spec)
    return read_names_file(spec)
