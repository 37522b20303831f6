"""webdataset shards: writing (format, manifest), rank x worker assignment (every sample once per epoch),
equal steps across ranks, damaged shards, pre-training from shards (and resuming it exactly)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("webdataset")

from conftest import TINY_CONFIG

from pomp.cli import main as cli_main  # noqa: E402
from pomp.data.folder import scan_class_folders  # noqa: E402
from pomp.data.shards import ShardSet, ShardStream, assign_shards, write_shards  # noqa: E402
from pomp.data.splits import few_shot_split, read_split_file  # noqa: E402
from pomp.data.synthetic import make_class_folders  # noqa: E402
from pomp.prompt import Prompt  # noqa: E402
from pomp.train import PretrainConfig, pretrain  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def mean_rgb(img) -> torch.Tensor:
    """A transform that identifies the image (generated noise images have distinct channel means)."""
    return torch.from_numpy(np.asarray(img, dtype=np.float64).mean(axis=(0, 1)))


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    """4 classes x 10 generated images -> 8 shards of 5 samples (+ manifest, classes.txt)."""
    data = make_class_folders(tmp_path / "data", num_classes=4, per_class=10)
    images = scan_class_folders(data / "images")
    write_shards(images, tmp_path / "shards", "train", maxcount=5, seed=0)
    return tmp_path / "shards"


def _pattern(shard_dir: Path, n: int, split: str = "train") -> str:
    return str(shard_dir / f"{split}-{{000000..{n - 1:06d}}}.tar")


def test_written_format(shard_dir):
    manifest = json.loads((shard_dir / "shards.json").read_text())
    assert manifest["format"] == "pomp-shards-v1"
    entry = manifest["splits"]["train"]
    assert entry["counts"] == [5] * 8 and entry["num_samples"] == 40
    assert (shard_dir / "classes.txt").read_text().splitlines() == manifest["classnames"] == ["c000", "c001", "c002",
                                                                                             "c003"]
    with tarfile.open(shard_dir / "train-000000.tar") as tar:
        names = tar.getnames()
        key = names[0].split(".")[0]
        members = {n.split(".", 1)[1] for n in names if n.startswith(key + ".")}
        assert members in ({"cls", "json", "jpg"}, {"cls", "json", "png"})
        label = int(tar.extractfile(f"{key}.cls").read())
        meta = json.loads(tar.extractfile(f"{key}.json").read())
    assert meta["label"] == label and meta["classname"] == manifest["classnames"][label]
    assert meta["path"].startswith(f"c{label:03d}/")
    labels_per_shard = []  # shuffled before writing: shards mix classes
    for i in range(8):
        with tarfile.open(shard_dir / f"train-{i:06d}.tar") as tar:
            labels_per_shard.append({int(tar.extractfile(m).read()) for m in tar.getmembers()
                                     if m.name.endswith(".cls")})
    assert max(len(s) for s in labels_per_shard) > 1


@pytest.mark.parametrize("epoch", [0, 1])
def test_two_ranks_two_workers_see_every_sample_once(shard_dir, epoch):
    shards = ShardSet.open(_pattern(shard_dir, 8), shard_dir / "shards.json")
    keys_by_rank = {}
    for rank in range(2):
        stream = ShardStream(shards.urls, len(shards.classnames), mean_rgb, rank=rank, world=2, epoch=epoch, chunk=3)
        keys = []
        for _, _, chunk_keys, _ in DataLoader(stream, batch_size=None, num_workers=2):
            keys += chunk_keys
        keys_by_rank[rank] = keys
    everything = keys_by_rank[0] + keys_by_rank[1]
    assert len(everything) == 40 and len(set(everything)) == 40  # each of the 40 samples exactly once
    assert len(keys_by_rank[0]) == len(keys_by_rank[1]) == 20
    # groups rotate over epochs: rank 0 reads group (0 + epoch) % 2
    assert sorted(assign_shards(8, 0, 2, epoch)) == list(range(epoch % 2, 8, 2))
    # workers split a rank's shards without overlap
    w0, w1 = (assign_shards(8, 0, 2, epoch, worker=w, num_workers=2) for w in range(2))
    assert not set(w0) & set(w1) and len(w0) + len(w1) == 4


def test_plan_loader_batches_each_sample_once_with_equal_steps(shard_dir, tmp_path):
    shards = ShardSet.open(_pattern(shard_dir, 8))  # classes: shards.json beside the shards
    direct = ShardStream(shards.urls, 4, mean_rgb, shuffle_buffer=0)  # one reader of everything, for reference
    reference = sorted(tuple(v.tolist()) for pixels, _, _, _ in direct for v in pixels)
    seen, steps = [], []
    for rank in range(2):
        plan = shards.plan(batch_size=4, rank=rank, world=2)
        assert plan.steps_per_epoch == 5 and plan.dropped_per_epoch == 0  # 20 samples per rank / 4
        batches = list(plan.loader(mean_rgb, epoch=1, seed=3, num_workers=2))
        steps.append(len(batches))
        for pixels, labels, _, skipped in batches:
            assert pixels.shape == (4, 3) and labels.shape == (4,) and skipped == 0
            seen += [tuple(v.tolist()) for v in pixels]
    assert steps == [5, 5]
    assert sorted(seen) == reference


def test_uneven_shards_cap_steps_to_smallest_group(tmp_path):
    data = make_class_folders(tmp_path / "data", num_classes=3, per_class=5)
    write_shards(scan_class_folders(data / "images"), tmp_path / "s", "train", maxcount=4)  # 15 -> 4,4,4,3
    shards = ShardSet.open(_pattern(tmp_path / "s", 4), tmp_path / "s" / "shards.json")
    assert shards.counts == [4, 4, 4, 3]
    with pytest.warns(UserWarning, match="3 of 15"):  # groups: 8 and 7 samples -> 3 steps of 2 on both ranks
        plans = [shards.plan(2, rank, 2) for rank in range(2)]
    assert [p.steps_per_epoch for p in plans] == [3, 3]
    with pytest.warns(UserWarning, match="left out"):  # 3 ranks: groups of 7, 4, 4 samples -> 2 steps of 2
        assert shards.plan(2, 0, 3).steps_per_epoch == 2
    with pytest.raises(ValueError, match="cannot be split over 5"):
        shards.plan(2, 0, 5)


def test_damaged_shard_keeps_step_count(shard_dir):
    path = shard_dir / "train-000002.tar"
    data = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(data[: len(data) // 3])  # truncated mid-shard
    shards = ShardSet.open(_pattern(shard_dir, 8))
    plan = shards.plan(batch_size=4, rank=0, world=2)
    with pytest.warns(UserWarning):
        batches = list(plan.loader(mean_rgb, epoch=0, num_workers=0))
    assert len(batches) == plan.steps_per_epoch == 5  # a short rank still takes every step (DDP stays in step)
    assert sum(0 if p is None else len(p) for p, _, _, _ in batches) < 20


def test_classes_txt_and_counting(shard_dir):
    shards = ShardSet.open(_pattern(shard_dir, 8), shard_dir / "classes.txt")  # counts read from the tar files
    assert shards.counts == [5] * 8 and shards.classnames == ["c000", "c001", "c002", "c003"]
    with pytest.raises(FileNotFoundError, match="not found"):
        ShardSet.open(_pattern(shard_dir, 9))


def test_cli_split_then_shard(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", num_classes=4, per_class=8)
    split = tmp_path / "split.json"
    assert cli_main(["data", "split", "--train-root", str(data / "images"), "--names", str(data / "names.txt"),
                     "--shots", "4", "--val-per-class", "2", "--seed", "5", "--out", str(split)]) == 0
    # the same split pretrain(--train-root ... --split-seed 5) makes in its out_dir
    from pomp.data.imagenet21k import resolve_names

    expected = few_shot_split(scan_class_folders(data / "images", resolve_names(str(data / "names.txt"))), 4, 2, 5)
    assert read_split_file(split, "train", data / "images").samples == expected["train"].samples
    assert read_split_file(split, "val", data / "images").samples == expected["val"].samples
    assert cli_main(["data", "split", "--train-root", str(data / "images"), "--out", str(split)]) == 2  # made once
    assert cli_main(["data", "shard", "--split-file", str(split), "--image-root", str(data / "images"),
                     "--out-dir", str(tmp_path / "shards"), "--maxcount", "3", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert manifest["splits"]["train"]["num_samples"] == 16 and manifest["splits"]["val"]["num_samples"] == 8
    assert manifest["classnames"][1] == "tabby cat"
    assert "--train-shards" in capsys.readouterr().out


def test_imagenet21k_p_names_resolve():
    pytest.importorskip("timm")
    from pomp.data.imagenet21k import resolve_names

    names = resolve_names("imagenet21k-p")
    assert len(names) == 10450 and next(iter(names)) == "n00005787"


def _shard_config(shards: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(backbone=TINY_CONFIG, train_shards=_pattern(shards, 8),
                train_classes=str(shards / "shards.json"), classes_per_step=3, batch_size=4, views=2, epochs=2,
                num_workers=2, out_dir=str(out), progress=False, checkpoint_every=3, lr=0.05, device="cpu")
    base.update(kw)
    return PretrainConfig(**base)


@pytest.mark.slow
def test_pretrain_from_shards_and_resume_exactly(shard_dir, tmp_path):
    data = make_class_folders(tmp_path / "val", num_classes=4, per_class=3, seed=1)
    write_shards(scan_class_folders(data / "images"), shard_dir, "val", maxcount=4)  # 12 val samples, 3 shards
    val = _pattern(shard_dir, 3, "val")
    full = pretrain(_shard_config(shard_dir, tmp_path / "full", val_shards=val))
    assert full["finished"] and full["global_step"] == 20  # 40 samples / 4 per step x 2 epochs
    assert full["best_val_acc1"] is not None
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert config["num_classes"] == 4 and config["num_train_images"] == 40 and config["num_val_images"] == 12
    cut = pretrain(_shard_config(shard_dir, tmp_path / "cut", val_shards=val, max_steps=7))  # mid-epoch 0
    assert not cut["finished"]
    resumed = pretrain(_shard_config(shard_dir, tmp_path / "cut", val_shards=val, resume=True))
    assert resumed["finished"]
    a = Prompt.load(tmp_path / "full" / "prompt.safetensors").ctx
    b = Prompt.load(tmp_path / "cut" / "prompt.safetensors").ctx
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="feature-cache"):
        pretrain(_shard_config(shard_dir, tmp_path / "x", feature_cache=str(tmp_path / "c")))


def test_label_outside_class_list_is_an_error(shard_dir, tmp_path):
    (tmp_path / "two.txt").write_text("a\nb\n")
    shards = ShardSet.open(_pattern(shard_dir, 8), tmp_path / "two.txt")
    stream = ShardStream(shards.urls, len(shards.classnames), mean_rgb, shuffle_buffer=0)
    with pytest.raises(ValueError, match="outside 0..1"):
        list(stream)

