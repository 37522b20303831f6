"""Scale-out: feature extraction split across ranks (merged cache reused by eval and cached-feature
training), and one small pre-training run from shards on 1 process and on 2 (torchrun, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIG as TINY
from conftest import torchrun_command

from pomp.cli import main as cli_main
from pomp.data.features import (
    cache_key,
    cached_image_features,
    compute_feature_part,
    extract_image_features,
    merge_feature_parts,
)
from pomp.data.folder import ImageDataset, LabelledImages, scan_class_folders
from pomp.data.splits import read_split_file
from pomp.data.synthetic import make_class_folders
from pomp.data.transforms import MultiView, train_transform
from pomp.prompt import Prompt
from pomp.train import PretrainConfig, pretrain


def _torchrun(args: list[str], timeout: int = 85) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(torchrun_command(args), env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _no_compute(*args, **kwargs):
    raise AssertionError("the cache should have been reused, not recomputed")


def test_feature_parts_merge_into_the_readers_cache(backbone, class_folders, tmp_path, monkeypatch):
    images = scan_class_folders(class_folders / "images")
    aug = MultiView(train_transform(backbone.image_spec), 2)
    dataset = ImageDataset(images, aug, seed=7)
    extra = {"seed": 7, "views": 2}
    single = cached_image_features(tmp_path / "single", backbone, dataset, extra, batch_size=5)
    for rank in (1, 0):  # two ranks simulated in turn; rank 0 merges
        compute_feature_part(tmp_path / "split", backbone, dataset, rank, 2, extra, batch_size=4, progress=False)
    merged = merge_feature_parts(tmp_path / "split", 2, cache_key(backbone, dataset, extra))
    assert merged.features.shape == single.features.shape == (36, 2, backbone.embed_dim)
    assert torch.equal(merged.labels, single.labels)
    torch.testing.assert_close(merged.features.float(), single.features.float(), atol=2e-3, rtol=0)  # float16 cache
    assert not list((tmp_path / "split").glob(".parts-*"))  # merged parts removed
    monkeypatch.setattr("pomp.data.features.compute_image_features", _no_compute)
    reread = cached_image_features(tmp_path / "split", backbone, ImageDataset(images, aug, seed=7), extra)
    assert torch.equal(reread.features, merged.features.half())
    assert extract_image_features(tmp_path / "split", backbone, dataset, extra) is not None  # reused as is


@pytest.mark.slow
def test_features_under_torchrun_are_reused_by_eval_and_training(backbone, tmp_path, monkeypatch):
    data = make_class_folders(tmp_path / "data", num_classes=4, per_class=6)
    split = tmp_path / "split.json"
    assert cli_main(["data", "split", "--train-root", str(data / "images"), "--shots", "3", "--val-per-class", "1",
                     "--out", str(split)]) == 0
    cache = tmp_path / "cache"
    proc = _torchrun(["features", "--backbone", TINY, "--device", "cpu", "--out-dir", str(cache), "--no-progress",
                      "--data", str(data / "images"), "--split-file", str(split), "--image-root", str(data / "images"),
                      "--views", "2", "--seed", "3", "--num-workers", "0", "--batch-size", "4"])
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["world_size"] for r in records] == [2, 2] and {r["images"] for r in records} == {24, 12}
    monkeypatch.setattr("pomp.data.features.compute_image_features", _no_compute)
    # what `pomp eval --feature-cache CACHE --data DATA` looks up
    images = scan_class_folders(data / "images")
    evalf = cached_image_features(cache / images.name, backbone, ImageDataset(images, backbone.eval_transform()))
    assert evalf.features.shape == (24, 1, backbone.embed_dim)
    # what `pomp pretrain --split-file ... --feature-cache CACHE --views 2 --seed 3` looks up
    train = read_split_file(split, "train", data / "images")
    aug = MultiView(train_transform(backbone.image_spec), 2)
    trainf = cached_image_features(cache / "train", backbone, ImageDataset(train, aug, seed=3), {"seed": 3, "views": 2})
    assert trainf.features.shape == (12, 2, backbone.embed_dim)
    summary = pretrain(PretrainConfig(backbone=TINY, split_file=str(split), image_root=str(data / "images"),
                                      feature_cache=str(cache), views=2, seed=3, batch_size=4, epochs=1,
                                      classes_per_step=3, num_workers=0, validate=False, progress=False,
                                      out_dir=str(tmp_path / "run"), device="cpu"))
    assert summary["finished"] and summary["global_step"] == 3  # 12 cached images / 4: the cache was reused


def _held_out_accuracy(backbone, prompt_path: Path, test: LabelledImages) -> float:
    from pomp.evaluate import build_classifier, zero_shot_metrics

    feats = cached_image_features(None, backbone, ImageDataset(test, backbone.eval_transform()), progress=False)
    classifier = build_classifier(backbone, test.classnames, prompt=Prompt.load(prompt_path))
    return zero_shot_metrics(feats.features.float(), feats.labels, classifier)["acc1"]


@pytest.mark.slow
def test_one_and_two_processes_from_shards(backbone, tmp_path, capsys):
    pytest.importorskip("webdataset")
    data = make_class_folders(tmp_path / "data", num_classes=6, per_class=14)
    split, shards = tmp_path / "split.json", tmp_path / "shards"
    assert cli_main(["data", "split", "--train-root", str(data / "images"), "--names", str(data / "names.txt"),
                     "--shots", "8", "--val-per-class", "2", "--out", str(split)]) == 0
    assert cli_main(["data", "shard", "--split-file", str(split), "--image-root", str(data / "images"),
                     "--out-dir", str(shards), "--maxcount", "6", "--no-progress"]) == 0
    common = dict(train_shards=str(shards / "train-{000000..000007}.tar"), train_classes=str(shards / "shards.json"),
                  val_shards=str(shards / "val-{000000..000001}.tar"), classes_per_step=0, views=2, epochs=2,
                  warmup_epochs=0, lr=2.0, num_workers=1, seed=0)
    one = pretrain(PretrainConfig(backbone=TINY, batch_size=4, out_dir=str(tmp_path / "one"), progress=False,
                                  device="cpu", **common))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in common.items()]
    _torchrun(["pretrain", "--backbone", TINY, "--batch-size", "2", "--out-dir", str(tmp_path / "two"),
               "--no-progress", "--device", "cpu", *flags])
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    configs = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("one", "two")]
    assert [c["world_size"] for c in configs] == [1, 2]
    assert [c["steps_per_epoch"] for c in configs] == [12, 12]  # 48 images: 1 x 4 and 2 x 2 per step
    assert one["finished"] and two["finished"] and one["global_step"] == two["global_step"] == 24
    # the 2-process val accuracy is gathered over both ranks' val shards: it equals one process scoring
    # the saved best prompt on all 12 val images
    val = read_split_file(split, "val", data / "images")
    for name, summary in (("one", one), ("two", two)):
        direct = _held_out_accuracy(backbone, tmp_path / name / "prompt_best.safetensors", val)
        assert summary["best_val_acc1"] == pytest.approx(direct, abs=1e-6)

    # held out: the images of each class in neither the train nor the val split
    chosen = {rel for s in ("train", "val") for rel, _ in read_split_file(split, s, data / "images").samples}
    from pomp.data.imagenet21k import resolve_names

    everything = scan_class_folders(data / "images", resolve_names(str(data / "names.txt")))
    test = LabelledImages(everything.root, [s for s in everything.samples if s[0] not in chosen],
                          everything.classnames, "held-out")
    assert len(test) == 24
    rows = [(name, s["best_val_acc1"], _held_out_accuracy(backbone, tmp_path / name / "prompt.safetensors", test))
            for name, s in (("one", one), ("two", two))]
    with capsys.disabled():
        print("\n  processes | best val acc1 (12 val images) | final prompt acc1 (24 held-out images)")
        for name, val, held in rows:
            print(f"  {('1' if name == 'one' else '2'):>9} | {100 * val:28.1f} | {100 * held:38.1f}")
    for _, val, held in rows:
        assert 0.0 <= val <= 1.0 and 0.0 <= held <= 1.0


class _FixedClassifier:
    """Stands in for a prompt in `_validate`: class features are the identity (3 classes, D = 3)."""

    def encode_class_features(self, backbone, vocab, chunk_size=2048, ids=None):
        return torch.eye(3) if ids is None else torch.eye(3)[ids]


def _validate_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from pomp.prompt import ClassTokens
    from pomp.train import Dist, _validate

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        if rank == 0:  # 3 of 4 right
            labels = torch.tensor([0, 1, 2, 0])
            feats = torch.eye(3)[[0, 1, 2, 1]]
        else:  # 0 of 2 right
            labels = torch.tensor([0, 1])
            feats = torch.eye(3)[[2, 2]]
        vocab = ClassTokens(["a", "b", "c"], torch.zeros(3, 1, dtype=torch.long), torch.ones(3, dtype=torch.long))
        acc = _validate(_FixedClassifier(), None, vocab, (feats.unsqueeze(1), labels), Dist(rank, world, rank),
                        torch.device("cpu"))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(acc))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_validation_accuracy_is_gathered_over_ranks(tmp_path):
    """Each rank scores its own val images; the accuracy is (sum of correct) / (sum of images) on every rank."""
    import torch.multiprocessing as mp

    mp.spawn(_validate_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    accs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert accs[0] == accs[1] == pytest.approx(3 / 6)  # not the mean of per-rank rates (0.375)
