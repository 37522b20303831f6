"""One implementation of each piece the package once repeated (issue 15), checked against what it must agree with:
label file names by hand and across commands, tables by hand, the single template against open_clip's list of
CLIP's templates, weight dtypes against open_clip's own casts, and a checkpoint in the format of pomp before
run facts (no "run", no "resumes") resumed to the same context as an uninterrupted run.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pomp.backbones.base import WEIGHT_DTYPES, weight_dtype
from pomp.data.names import SINGLE_TEMPLATE
from pomp.evaluate import csv_table, label_filename, markdown_table

REPO = Path(__file__).resolve().parents[1]


# --- label file names --------------------------------------------------------------------------------------------
def test_label_filename_by_hand():
    assert label_filename("prompt:p.safetensors") == "prompt_p.safetensors"
    assert label_filename("baseline:single") == "baseline_single"
    assert label_filename("prompt:my prompt+v2.safetensors") == "prompt_my_prompt_v2.safetensors"  # one _ per run
    assert label_filename("prompt:a/b:c.pt") == "prompt_a_b_c.pt"
    assert label_filename("prompt:café.pt") == "prompt_caf_.pt"  # ASCII only: every file system takes it


def test_eval_segment_and_detect_name_one_label_alike(tiny_config, tmp_path):
    """The same prompt file (a space and a '+' in its name) gives the same per-label name in every command."""
    pytest.importorskip("pycocotools")
    from pomp.backbones import load_backbone
    from pomp.cli import main
    from pomp.data.synthetic import make_class_folders
    from pomp.dense.scenes import make_scenes
    from pomp.prompt import Prompt

    prompt_path = tmp_path / "my prompt+v2.safetensors"
    Prompt.init(load_backbone(tiny_config), n_ctx=2, seed=0).save(prompt_path)
    scenes = make_scenes(tmp_path / "scenes", num_images=2, size=48, seed=3, source="shapes")
    folders = make_class_folders(tmp_path / "cls", num_classes=3, per_class=2)
    common = ["--backbone", tiny_config, "--prompt", str(prompt_path)]
    assert main(["eval", "--data", str(folders / "images"), "--names", str(folders / "names.txt"),
                 "--out-dir", str(tmp_path / "eval"), "--num-workers", "0", *common]) == 0
    assert main(["segment", "--data", str(scenes), "--size", "32", "--overlays", "0",
                 "--out-dir", str(tmp_path / "seg"), *common]) == 0
    assert main(["detect", "--annotations", str(scenes / "annotations.json"), "--images", str(scenes / "JPEGImages"),
                 "--size", "32", "--out-dir", str(tmp_path / "det"), *common]) == 0
    name = "prompt_my_prompt_v2.safetensors"
    assert sorted(p.name for p in (tmp_path / "eval").glob("*.json")) == [f"images__{name}.json"]
    assert [p.name for p in (tmp_path / "seg").iterdir() if p.is_dir()] == [name]
    assert [p.name for p in (tmp_path / "det").iterdir() if p.is_dir()] == [name]
    records = [json.loads((tmp_path / f"eval/images__{name}.json").read_text()),
               json.loads((tmp_path / f"seg/{name}/metrics.json").read_text()),
               json.loads((tmp_path / f"det/{name}/metrics.json").read_text())]
    assert {r["prompt"] for r in records} == {"prompt:my prompt+v2.safetensors"}
    # one record builder: the same keys, in the same order, up to the task's own metrics
    assert [list(r)[:7] for r in records] == [["dataset", "model", "pretrained", "task", "metrics", "prompt",
                                               "backbone"]] * 3
    assert [r["task"] for r in records] == ["zeroshot_classification", "zeroshot_segmentation", "zeroshot_detection"]


def test_no_other_label_sanitizer_is_left():
    """Per-label outputs are named by `label_filename` only: no `.replace(":", "_")` left in the package."""
    offenders = []
    for path in sorted((REPO / "pomp").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "replace"
                    and [getattr(a, "value", None) for a in node.args] == [":", "_"]):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


# --- tables ------------------------------------------------------------------------------------------------------
def test_markdown_and_csv_tables_by_hand():
    header, rows = ["prompt", "a", "b"], [["x", "1.00", ""], ["y, z", 2, None]]
    assert markdown_table(header, rows) == "| prompt | a | b |\n|---|---|---|\n| x | 1.00 |  |\n| y, z | 2 | None |\n"
    assert csv_table(header, rows) == 'prompt,a,b\nx,1.00,\n"y, z",2,\n'


# --- the single template -----------------------------------------------------------------------------------------
def test_the_single_template_is_clips_and_written_once():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert SINGLE_TEMPLATE.format("tabby") in [t("tabby") for t in OPENAI_IMAGENET_TEMPLATES]
    places = []
    for path in sorted((REPO / "pomp").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        coop_table = {id(n) for a in ast.walk(tree) if isinstance(a, ast.AnnAssign | ast.Assign)
                      and "DATASET_TEMPLATES" in ast.unparse(a.targets[0] if isinstance(a, ast.Assign) else a.target)
                      for n in ast.walk(a.value)}  # CoOp's per-dataset table, kept as CoOp wrote it
        places += [path.relative_to(REPO).as_posix() for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and node.value == SINGLE_TEMPLATE and id(node) not in coop_table]
    assert places == ["pomp/data/names.py"]


# --- precision -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", sorted(WEIGHT_DTYPES))
def test_weight_dtypes_are_open_clips_own_casts(tiny_config, precision):
    """open_clip's `create_model(precision=...)` casts the weights to what the table says (checked on a linear
    layer's weight, which every cast covers)."""
    open_clip.add_model_config(tiny_config)
    model = open_clip.create_model(Path(tiny_config).stem, pretrained=None, precision=precision)
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert linear.weight.dtype == WEIGHT_DTYPES[precision] == weight_dtype(precision)


def test_every_backbone_family_refuses_an_unknown_precision_alike(tiny_config):
    from pomp.backbones.hf_clip import load_hf_clip
    from pomp.backbones.offline import PRECISIONS, load_minilm_efficientnet
    from pomp.backbones.open_clip import load_open_clip

    with pytest.raises(ValueError, match=r"^unknown precision 'fp8' \(one of fp32, fp16, bf16, pure_fp16"):
        load_open_clip(tiny_config, precision="fp8")
    with pytest.raises(ValueError, match=r"^unknown precision 'fp8' \(one of fp32, fp16, bf16, pure_fp16"):
        load_hf_clip("hf:/nonexistent", precision="fp8")
    with pytest.raises(ValueError, match=r": unknown precision 'amp' \(one of fp32, fp16, bf16\)$"):
        load_minilm_efficientnet(precision="amp")
    assert set(PRECISIONS) < set(WEIGHT_DTYPES)


# --- run state ---------------------------------------------------------------------------------------------------
def test_a_checkpoint_of_pomp_before_run_facts_resumes_to_the_uninterrupted_result(class_folders, tiny_config,
                                                                                   tmp_path):
    """The header state as pomp wrote it before it stored the run's settings and facts (six keys, no "run", no
    "resumes"), written with safetensors' own `save_file` as that version did: the run resumes (with the
    warning that it cannot compare settings) and ends on exactly the context of a run never stopped."""
    from pomp.train import PretrainConfig, RunState, pretrain

    def config(out: Path, **extra) -> PretrainConfig:
        return PretrainConfig(backbone=tiny_config, train_root=str(class_folders / "images"),
                              names=str(class_folders / "names.txt"), out_dir=str(out), shots=4, val_per_class=2,
                              classes_per_step=4, batch_size=4, views=2, epochs=2, num_workers=0, device="cpu",
                              progress=False, lr=0.05, **extra)

    pretrain(config(tmp_path / "whole"))
    stopped = tmp_path / "stopped"
    pretrain(config(stopped, max_steps=3))
    checkpoint = stopped / "checkpoint.safetensors"
    with safe_open(str(checkpoint), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(f.metadata()["state"])
    old = {k: state[k] for k in ("global_step", "best_val_acc1", "best_epoch", "bad_steps", "skipped_images",
                                 "history")}
    assert old["global_step"] == 3 and set(state) - set(old) == {"resumes", "run"}
    save_file(tensors, str(checkpoint), metadata={"state": json.dumps(old)})
    assert RunState.from_json(old) == RunState(**old)
    with pytest.warns(UserWarning, match="written by an older pomp without its settings"):
        summary = pretrain(config(stopped, resume=True))
    assert summary["finished"] and summary["global_step"] == json.loads(
        (tmp_path / "whole/summary.json").read_text())["global_step"]
    with safe_open(str(tmp_path / "whole/prompt.safetensors"), "pt") as a, \
            safe_open(str(stopped / "prompt.safetensors"), "pt") as b:
        assert torch.equal(a.get_tensor("ctx"), b.get_tensor("ctx"))
    with safe_open(str(checkpoint), "pt") as f:
        resumed = json.loads(f.metadata()["state"])
    assert list(resumed) == ["global_step", "best_val_acc1", "best_epoch", "bad_steps", "skipped_images", "history",
                             "resumes", "run"]
    assert [r["step"] for r in resumed["resumes"]] == [3]
