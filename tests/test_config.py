"""pomp.config: every option defined once, every parser generated from the config fields, the choices equal to the
library's own, `--help` light, and bad values refused in one line that names the option."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pomp import config
from pomp.cli import build_parser, main
from pomp.config import (
    BackbonesConfig,
    BenchmarkConfig,
    CheckNamesConfig,
    ConvertConfig,
    DataShardConfig,
    DataSplitConfig,
    DetectConfig,
    EmbedConfig,
    EvalConfig,
    FeaturesConfig,
    InfoConfig,
    Options,
    PretrainConfig,
    SegmentConfig,
    default_of,
    help_text,
    is_option,
)

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"pretrain": PretrainConfig, "eval": EvalConfig, "benchmark": BenchmarkConfig, "embed": EmbedConfig,
            "info": InfoConfig, "backbones": BackbonesConfig, "convert": ConvertConfig, "data split": DataSplitConfig,
            "data shard": DataShardConfig, "data check-names": CheckNamesConfig, "features": FeaturesConfig,
            "segment": SegmentConfig, "detect": DetectConfig}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs[0].choices) if subs else {}


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every leaf command of `pomp` ("data split"...) and its parser."""
    found = {}
    for name, sub in _subcommands(build_parser()).items():
        nested = _subcommands(sub)
        found.update({f"{name} {n}": p for n, p in nested.items()} if nested else {name: sub})
    return found


def options_of(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if is_option(f)]


# --- every parser is generated from its config -----------------------------------------------------------------
def test_every_command_has_a_config():
    parsers = command_parsers()
    assert set(parsers) == set(COMMANDS)
    for name, parser in parsers.items():
        assert parser.get_default("func").args[0] is COMMANDS[name], name


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_argument_is_a_config_field_with_its_default_and_help(command):
    parser, cls = command_parsers()[command], COMMANDS[command]
    actions = {a.dest: a for a in parser._actions if not isinstance(a, argparse._HelpAction)}
    fields = options_of(cls)
    assert sorted(actions) == sorted(f.name for f in fields)  # no argument declared by hand beside the fields
    for f in fields:
        action, meta, default = actions[f.name], f.metadata, default_of(f)
        assert action.help == help_text(f) and action.help.startswith(meta["help"]), f.name
        if meta["positional"]:
            assert action.option_strings == [] and action.required, f.name
            continue
        assert action.option_strings[0] == "--" + f.name.replace("_", "-"), f.name
        assert action.required == (default is dataclasses.MISSING), f.name
        if default is not dataclasses.MISSING:
            assert action.default == default and type(action.default) is type(default), f.name
            assert f"(default: {default})" in action.help or default in (None, [], ""), f.name
        if meta["type"] is bool:
            assert isinstance(action, argparse.BooleanOptionalAction), f.name
            assert action.option_strings == [f"--{f.name.replace('_', '-')}", f"--no-{f.name.replace('_', '-')}"]
        else:
            assert action.type is meta["type"] and action.choices == meta["choices"], f.name
            assert isinstance(action, argparse._AppendAction) == meta["repeatable"], f.name


def test_the_parsed_config_is_the_configs_default():
    """Parsing only the required options gives the dataclass's own defaults (`PretrainConfig()` and `pomp
    pretrain` are the same run)."""
    args = build_parser().parse_args(["pretrain"])
    parsed = PretrainConfig(**{f.name: getattr(args, f.name) for f in options_of(PretrainConfig)})
    assert parsed == PretrainConfig()


def test_no_cli_module_declares_an_argument_by_hand():
    expected = {"common.py": 1, "__init__.py": 1}  # `add_command`'s loop over the fields; `pomp --version`
    for path in sorted((REPO / "pomp" / "cli").glob("*.py")):
        calls = [node.func.attr for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
        assert calls.count("add_argument") == expected.get(path.name, 0), path


def test_reconciled_defaults_are_one_per_option():
    """--device, --num-workers and --progress (once: cpu for embed, 2 or 4 workers, progress on or off)."""
    defaults: dict[str, set] = {}
    for parser in command_parsers().values():
        for action in parser._actions:
            if action.dest in ("device", "num_workers", "progress", "batch_size", "precision", "pretrained"):
                defaults.setdefault(action.dest, set()).add(action.default)
    batch_sizes = defaults.pop("batch_size")
    assert defaults == {"device": {"auto"}, "num_workers": {4}, "progress": {True}, "precision": {"bf16"},
                        "pretrained": {None}}
    assert batch_sizes == {64, 32}  # 64 images per batch of the image tower; pretrain: 32 per step (the paper's)


def test_no_option_hides_a_method_of_its_config():
    """A field named like a method (`PretrainConfig.validate` is --validate) would replace it on instances."""
    for cls in COMMANDS.values():
        methods = {name for klass in cls.__mro__ for name, v in vars(klass).items() if callable(v)}
        assert not methods & {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_configs_stay_importable_where_they_were():
    import pomp.dense.run
    import pomp.train

    assert pomp.train.PretrainConfig is PretrainConfig and pomp.train.RESUME_WITH_PERMISSION is \
        config.RESUME_WITH_PERMISSION
    assert pomp.dense.run.SegmentConfig is SegmentConfig and pomp.dense.run.DetectConfig is DetectConfig


# --- the choices are the library's ------------------------------------------------------------------------------
def test_choices_equal_the_librarys():
    from pomp.data.features import autocast_for
    from pomp.dense.regions import METHODS
    from pomp.evaluate import BASELINES, CONFIG_DIR
    from pomp.interop import CONVERT_FORMATS, DTYPES
    from pomp.suites import SUITE_CHOICES
    from pomp.train import RESUME_FREE

    assert config.BASELINES == BASELINES and set(config.DENSE_BASELINES) < set(BASELINES)
    assert config.SUITES == SUITE_CHOICES and config.REGION_METHODS == METHODS
    assert config.CONVERT_FORMATS == CONVERT_FORMATS and config.CTX_DTYPES == tuple(DTYPES)
    assert config.CONFIG_DIR == CONFIG_DIR
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    assert config.RESUME_WITH_PERMISSION <= fields and not config.RESUME_WITH_PERMISSION & RESUME_FREE
    # each precision is one autocast: bf16 and fp16 on CUDA, none with fp32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without CUDA, torch says it disables the autocast
        dtypes = {p: getattr(autocast_for(torch.device("cuda"), p), "fast_dtype", None) for p in config.PRECISIONS}
    assert dtypes == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def test_seed_limit_is_numpys():
    np.random.default_rng(config.SEED_LIMIT - 1)
    np.random.RandomState(config.SEED_LIMIT - 1)
    with pytest.raises(ValueError):
        np.random.RandomState(config.SEED_LIMIT)


# --- --help is light --------------------------------------------------------------------------------------------
def test_help_imports_no_torch():
    """`pomp --help` and `pomp CMD --help` for every command, in a fresh interpreter."""
    script = (
        "import sys, io, contextlib\n"
        "from pomp.cli import main\n"
        f"for argv in {[[]] + [c.split() for c in COMMANDS]!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            main([*argv, '--help'])\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, argv\n"
        "    assert out.getvalue().startswith('usage: pomp'), argv\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'open_clip', 'transformers')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.replace("'", '"')) == []


def test_config_module_imports_nothing_of_pomp():
    tree = ast.parse((REPO / "pomp" / "config.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("pomp")]
    assert [m for m in imported if m.split(".")[0] == "torch"] == ["torch"]  # only inside BackboneOptions.check


# --- bad values: one line naming the option, nothing created ---------------------------------------------------
MINIMAL = {  # the required options of each command (nothing is read before the options are checked)
    "pretrain": ["--train-root", "data"], "eval": ["--backbone", "b", "--baseline", "single", "--data", "d"],
    "benchmark": ["--backbone", "b", "--baseline", "single", "--data-root", "d"],
    "embed": ["--backbone", "b", "--classes", "c.txt"], "info": ["p.safetensors"], "backbones": ["b"],
    "convert": ["a.pth.tar", "b.safetensors"], "data split": ["--train-root", "d", "--out", "OUT/split.json"],
    "data shard": ["--train-root", "d"], "data check-names": ["--tree", "t.pth"],
    "features": ["--backbone", "b", "--data", "d"], "segment": ["--backbone", "b", "--baseline", "single", "--data", "d"],
    "detect": ["--backbone", "b", "--baseline", "single", "--annotations", "a.json", "--images", "i"],
}


def _bad_values(f: dataclasses.Field) -> list[tuple[str, str]]:
    """(text, what the error says) for values out of the option's bounds."""
    meta = f.metadata
    if meta["type"] is int and meta["minimum"] is not None:
        low = meta["minimum"]
        cases = [(str(low - 1), f"must be an integer >= {low}, got {low - 1}")]
        if meta["below"] is not None:
            cases.append((str(meta["below"]), "must be < 2**32"))
        return cases
    if meta["type"] is float:
        return [("nan", "must be a finite number"), ("inf", "must be a finite number")] + (
            [("0", "must be a finite number > 0")] if meta["above"] == 0 else []) + (
            [("1", "and < 1")] if meta["below"] == 1 else []) + (
            [(str(meta["minimum"] - 1), f">= {meta['minimum']:g}")] if meta["minimum"] is not None else []) + (
            [(str(meta["maximum"] + 1), f"<= {meta['maximum']:g}")] if meta["maximum"] is not None else [])
    return []


BOUNDED = [(c, f.name, text, says) for c, cls in sorted(COMMANDS.items()) for f in options_of(cls)
           for text, says in _bad_values(f)]


@pytest.mark.parametrize("command,name,text,says", BOUNDED, ids=[f"{c}-{n}-{t}" for c, n, t, _ in BOUNDED])
def test_out_of_bounds_value_is_one_line_naming_the_option(tmp_path, capsys, command, name, text, says):
    out = tmp_path / "new"
    argv = [*command.split(), *[a.replace("OUT", str(out)) for a in MINIMAL[command]], f"--{name.replace('_', '-')}={text}"]
    if "out_dir" in {f.name for f in dataclasses.fields(COMMANDS[command])}:
        argv += ["--out-dir", str(out / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pomp {command.split()[0]}: error: --{name.replace('_', '-')} "), err
    assert says in err, err
    assert not out.exists()


def test_every_bounded_option_is_tested():
    bounded = {(c, f.name) for c, cls in COMMANDS.items() for f in options_of(cls)
               if any(f.metadata[k] is not None for k in ("minimum", "above", "below", "maximum"))
               or f.metadata["type"] is float}
    assert bounded == {(c, n) for c, n, _, _ in BOUNDED}
    assert ("eval", "batch_size") in bounded and ("pretrain", "lr") in bounded and ("detect", "top_k") in bounded


@pytest.mark.parametrize("command,argv,needle", [
    ("eval", ["--precision", "bf32"], "argument --precision: invalid choice: 'bf32'"),
    ("segment", ["--baseline", "dataset"], "argument --baseline: invalid choice: 'dataset'"),
    ("eval", ["--batch-size", "two"], "argument --batch-size: invalid int value: 'two'"),
])
def test_parse_errors_are_one_line(capsys, command, argv, needle):
    with pytest.raises(SystemExit) as exit_info:
        main([command, *MINIMAL[command], *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize("command,argv,needle", [
    ("eval", ["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("segment", ["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("embed", ["--template", "a photo"], "--template must hold {} where the class name goes"),
    ("features", ["--split-file", "s.json", "--train-root", "t"], "--split-file and --train-root: give one source"),
    ("data shard", ["--splits", "train"], "--splits only applies with --split-file"),
    ("eval", ["--image-root", "r"], "--image-root applies to split JSON files; none is given"),
])
def test_rules_across_options_are_one_line(tmp_path, capsys, command, argv, needle):
    out = tmp_path / "new"
    rc = main([*command.split(), *MINIMAL[command], *argv, "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err and err.startswith(f"pomp {command.split()[0]}: error: ")
    assert not out.exists()


def test_no_prompt_nor_baseline_names_the_choices(capsys):
    assert main(["segment", "--backbone", "b", "--data", "d"]) == 2
    assert capsys.readouterr().err == "pomp segment: error: give --prompt and/or --baseline single|ensemble\n"
    assert main(["eval", "--backbone", "b", "--data", "d"]) == 2
    assert capsys.readouterr().err == "pomp eval: error: give --prompt and/or --baseline single|ensemble|dataset\n"


def test_a_config_made_in_python_is_verified_as_the_command_line_is():
    with pytest.raises(ValueError, match=r"^--epochs must be an integer >= 1, got 0$"):
        PretrainConfig(train_root="d", epochs=0).verify()
    with pytest.raises(ValueError, match=r"^--precision must be bf16, fp16 or fp32, got 'int8'$"):
        EvalConfig(backbone="b", baseline=["single"], data=["d"], precision="int8").verify()
    with pytest.raises(ValueError, match=r"^--method must be roi or crop, got 'box'$"):
        DetectConfig(backbone="b", baseline=["single"], annotations="a", images="i", method="box").verify()
    PretrainConfig(train_root="d", n_ctx=0, ctx_init="a photo of a").verify()  # n_ctx follows the words
    PretrainConfig(train_root="d").verify()
    assert issubclass(PretrainConfig, Options)


@pytest.mark.parametrize("make,says", [
    # a bool that is not one: 'no' would read as true
    (lambda: PretrainConfig(train_root="d", augment="no"), "--augment must be True or False, got 'no'"),
    (lambda: EvalConfig(backbone="b", baseline=["single"], data=["d"], progress=0), "--progress must be True or False"),
    # a required text option left None, or given a number
    (lambda: PretrainConfig(train_root="d", backbone=None), "--backbone must be a string, got None"),
    (lambda: EmbedConfig(backbone="b", classes=3, out_dir="o"), "--classes must be a string, got 3"),
    (lambda: InfoConfig(prompt=None), "--prompt must be a string, got None"),
    # a repeatable option given one string: its characters would be taken as values
    (lambda: EvalConfig(backbone="b", baseline=["single"], data="d/split.json"), "--data takes a list of values"),
    (lambda: EvalConfig(backbone="b", baseline="single", data=["d"]), "--baseline takes a list of values"),
    (lambda: EvalConfig(backbone="b", baseline=["single"], data=[]), "--data is required: give at least one value"),
    (lambda: BenchmarkConfig(backbone="b", baseline=["single"], data_root="r", prompt=[3]),
     "--prompt must be a string"),
    # floats of the dense commands: a probability, a factor
    (lambda: SegmentConfig(backbone="b", baseline=["single"], data="d", bg_threshold=1.5), "--bg-threshold must be"),
    (lambda: DetectConfig(backbone="b", baseline=["single"], annotations="a", images="i", context=-1.0),
     "--context must be a finite number > 0, got -1.0"),
])
def test_a_config_made_in_python_is_refused_for_a_value_the_command_line_cannot_give(make, says):
    with pytest.raises(ValueError, match="^" + re.escape(says)):
        make().verify()


def test_a_path_object_is_kept_as_the_text_the_command_line_gives(tmp_path):
    cfg = PretrainConfig(train_root=tmp_path / "images", out_dir=tmp_path / "run", names=tmp_path / "names.txt")
    cfg.verify()
    assert (cfg.train_root, cfg.out_dir, cfg.names) == (str(tmp_path / "images"), str(tmp_path / "run"),
                                                        str(tmp_path / "names.txt"))
    assert json.loads(json.dumps(dataclasses.asdict(cfg)))["out_dir"] == str(tmp_path / "run")  # config.json
    evaluated = EvalConfig(backbone="b", baseline=["single"], data=[tmp_path / "a", "b"])
    assert evaluated.data == [str(tmp_path / "a"), "b"]


# --- one prompt-or-baseline run builder -------------------------------------------------------------------------
def test_classifier_runs_label_load_and_place_prompts(backbone, tmp_path):
    from pomp.classifier_runs import load_classifier_runs, place_on
    from pomp.prompt import Prompt

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Prompt.init(backbone, n_ctx=2, seed=0).save(tmp_path / folder / "p.safetensors")
    Prompt.init(backbone, n_ctx=3, seed=1).save(tmp_path / "q.safetensors")
    paths = [str(tmp_path / "a" / "p.safetensors"), str(tmp_path / "b" / "p.safetensors"),
             str(tmp_path / "q.safetensors")]
    runs = load_classifier_runs(paths, ["single", "dataset", "single"])
    assert [label for label, _ in runs] == [f"prompt:{paths[0]}", f"prompt:{paths[1]}", "prompt:q.safetensors",
                                            "baseline:single", "baseline:dataset"]
    assert [kwargs["prompt"].n_ctx for _, kwargs in runs[:3]] == [2, 2, 3]
    assert [kwargs for _, kwargs in runs[3:]] == [{"baseline": "single"}, {"baseline": "dataset"}]
    assert place_on(runs, backbone) is runs
    assert all(kwargs["prompt"].ctx.device == backbone.device for _, kwargs in runs[:3])


def test_classifier_runs_refuse_a_prompt_of_another_width(backbone, tmp_path):
    from pomp.classifier_runs import load_classifier_runs, place_on
    from pomp.prompt import Prompt

    prompt = Prompt.init(backbone, n_ctx=2, seed=0)
    wider = Prompt(torch.zeros(2, backbone.text_width + 8), dict(prompt.meta))
    wider.save(tmp_path / "wide.safetensors")
    runs = load_classifier_runs([str(tmp_path / "wide.safetensors")], [])
    with pytest.raises(ValueError, match="does not match the text width"):
        place_on(runs, backbone)
