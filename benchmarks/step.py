#!/usr/bin/env python
"""One training step of pomp against an official-style reference step: seconds, peak memory, images/s.

Both steps, in one run, on the same model, the same random pixels and the real ImageNet-21K-P
class names (10,450), with a real optimizer step on the context:

reference  written the way the official POMP code works: every prompt 77 tokens (never cut),
           the positives encoded WITH repeats, one per image view (B*V prompts), plus the K-1
           sampled negatives; open_clip's transformer with its explicit additive causal mask;
           the image tower run every step; fp16 autocast + GradScaler on GPU, fp32 on CPU.
pomp       the library's own step (`pomp.train.encode_and_backward`, the function pre-training
           calls): distinct classes encoded once, sequences cut after the last EOT, SDPA
           is_causal text path; bf16 autocast on GPU (the library default), fp32 on CPU; one pass
           over all classes needed (text_chunk_size never reached).
pomp-gradcache  the same with the library's default text_chunk_size (2048): more classes than
           that are encoded twice, without then with graph (gradient caching). Only run where
           it differs from `pomp` (distinct classes > chunk size, e.g. K = 4000 or all).
pomp-mha   `pomp` with the fast text path off (open_clip's nn.MultiheadAttention + mask): what
           the SDPA path alone brings. Opt-in.
pomp-compile  `pomp` with the fast text blocks under torch.compile (dynamic shapes); warm-up
           steps include the compilation (reported as `first_step_s`). Opt-in.

Timing: `step_s` is the median wall time of the timed steps (CUDA synchronised); `cpu_s` the
median process CPU time of a step (all threads), the steadier figure on a shared CPU.

K = classes per step (own class + K-1 sampled negatives); `all` = every class is a negative
(as `--classes-per-step 0` in pre-training). Data loading and augmentation are NOT measured
(pixels are random tensors already on the device), for either implementation.

Memory: on CUDA `torch.cuda.max_memory_allocated()` (everything allocated, weights included,
peak since the configuration started). On CPU the growth of the process's peak resident set
(VmHWM) over its resident set just before the first step; the peak is reset through
/proc/self/clear_refs where the kernel allows it, and each configuration runs in a fresh
subprocess (`--isolate`), so one configuration's allocations never count for another.

Usage:
  python benchmarks/step.py --out results.json                          # GPU: ViT-B-16, full grid
  python benchmarks/step.py --device cpu --ks 100,1000 --n-ctx 4 --steps 3   # CPU: small model
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
CPU_MODEL = HERE / "cpu-small-clip.json"
IMPLS = ("reference", "pomp", "pomp-gradcache", "pomp-mha", "pomp-compile")
# The paper's headline recipe (method.md §4), on one device: 32 images x 4 views per step.
RECIPE = {"classes": 10450, "shots": 16, "epochs": 5, "images_per_step": 32, "views": 4, "K": 1000, "gpus": 8}


# --- arguments ---------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--model", default=None,
                   help="open_clip name or config JSON, random weights (default: ViT-B-16 on GPU, "
                        "benchmarks/cpu-small-clip.json on CPU)")
    p.add_argument("--ks", default=None, help="classes per step, comma-separated; 'all' = every class "
                                              "(default: 100,1000,4000,all on GPU; 100,1000 on CPU)")
    p.add_argument("--n-ctx", default=None, help="context lengths, comma-separated (default: 4,16 on GPU; 4 on CPU)")
    p.add_argument("--impls", default="reference,pomp,pomp-gradcache",
                   help=f"comma-separated, from {', '.join(IMPLS)} (default: reference,pomp,pomp-gradcache)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default: 10 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 GPU, 1 CPU)")
    p.add_argument("--images-per-step", type=int, default=32, help="images per step (B)")
    p.add_argument("--views", type=int, default=4, help="augmented views per image (V)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="use only the first N ImageNet-21K-P names (default: all 10,450)")
    p.add_argument("--text-chunk-size", type=int, default=2048, help="pomp-gradcache chunk size (library default)")
    p.add_argument("--precision", default="bf16", help="pomp autocast on GPU: bf16 | fp16 | fp32 (CPU: always fp32)")
    p.add_argument("--reference-precision", default="fp16", help="reference autocast on GPU (CPU: always fp32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: min(2, cores))")
    p.add_argument("--isolate", default="auto", choices=["auto", "yes", "no"],
                   help="one subprocess per configuration (auto: yes on CPU, no on GPU)")
    p.add_argument("--child-timeout", type=float, default=1800, help="seconds per isolated configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the rows and the recipe estimate as JSON here")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device.startswith("cuda")
    if args.model is None:
        args.model = "ViT-B-16" if gpu else os.path.relpath(CPU_MODEL)
    args.ks = args.ks or ("100,1000,4000,all" if gpu else "100,1000")
    args.n_ctx = args.n_ctx or ("4,16" if gpu else "4")
    args.steps = args.steps if args.steps is not None else (10 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.threads = args.threads or max(1, min(2, os.cpu_count() or 1))
    for impl in args.impls.split(","):
        if impl not in IMPLS:
            p.error(f"unknown impl {impl!r}; choose from {', '.join(IMPLS)}")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args


def _ks(args) -> list[int | str]:
    return [k if k == "all" else int(k) for k in (s.strip() for s in args.ks.split(",")) if k]


def _n_ctxs(args) -> list[int]:
    return [int(s) for s in args.n_ctx.split(",") if s.strip()]


# --- memory ------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0, `echo 5 > /proc/self/clear_refs`); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class MemoryMeter:
    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated (total, weights included)"
        else:
            self.reset = _reset_peak_rss()
            self.base = _rss_bytes()
            self.method = ("peak RSS growth over the pre-step RSS (VmHWM reset via /proc/self/clear_refs)"
                           if self.reset else "peak RSS (ru_maxrss, process lifetime) minus the pre-step RSS")

    def peak(self) -> tuple[float, float]:
        """(peak GiB as reported, baseline GiB)."""
        gib = 1024 ** 3
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / gib, self.base / gib
        return max(0, _peak_rss_bytes() - self.base) / gib, self.base / gib


# --- the steps ---------------------------------------------------------------------------------
class Bench:
    """Model, class names and their prompt tokens per n_ctx, shared by the configurations."""

    def __init__(self, args):
        import pomp
        from pomp.data.imagenet21k import classnames

        self.args = args
        self.device = torch.device(args.device)
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        self.backbone = pomp.load_backbone(args.model, device=self.device)
        self.names = classnames()
        if args.num_classes:
            self.names = self.names[: args.num_classes]
        self.setup_s = time.perf_counter() - t0
        self.class_tokens_by_n_ctx = {}

    def class_tokens(self, n_ctx: int):
        from pomp.prompt import Prompt

        if n_ctx not in self.class_tokens_by_n_ctx:
            prompt = Prompt.init(self.backbone, n_ctx=n_ctx, seed=self.args.seed)
            self.class_tokens_by_n_ctx[n_ctx] = prompt.tokenize_classes(self.backbone, self.names)
        return self.class_tokens_by_n_ctx[n_ctx]


def _reference_text_features(backbone, prompt, class_tokens, ids: torch.Tensor) -> torch.Tensor:
    """Official-style class features: full 77-token prompts, the model's transformer with its
    explicit causal mask, feature at the EOT (argmax) position, text projection."""
    model = backbone.model
    text = model.text if hasattr(model, "text") else model
    tokens = class_tokens.tokens[ids].to(backbone.device)  # [C, 77]: never cut
    with torch.no_grad():
        embeddings = text.token_embedding(tokens)
    start, n = backbone.prompt_prefix_length, prompt.n_ctx
    ctx = prompt.ctx.to(embeddings.dtype).unsqueeze(0).expand(len(ids), -1, -1)
    x = torch.cat([embeddings[:, :start], ctx, embeddings[:, start + n:]], dim=1)
    cast = text.transformer.get_cast_dtype()
    x = x.to(cast) + text.positional_embedding.to(cast)
    x = text.transformer(x, attn_mask=text.attn_mask)
    x = text.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = text.text_projection
    x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return F.normalize(x.float(), dim=-1)


def run_config(bench: Bench, impl: str, K: int | str, n_ctx: int) -> dict:
    """Warm up, then time `steps` steps of one configuration; returns a result row."""
    from pomp.data.features import autocast_for, encode_pixels
    from pomp.loss import local_contrast_loss, sample_negatives
    from pomp.prompt import Prompt
    from pomp.train import PretrainConfig, encode_and_backward

    args, backbone, device = bench.args, bench.backbone, bench.device
    gpu = device.type == "cuda"
    class_tokens = bench.class_tokens(n_ctx)
    num_classes = len(class_tokens)
    b, v = args.images_per_step, args.views
    k_minus_1 = num_classes if K == "all" or K - 1 >= num_classes else K - 1
    row = {"impl": impl, "K": K, "n_ctx": n_ctx, "device": str(device), "model": args.model,
           "images_per_step": b, "views": v, "num_classes": num_classes, "negatives": k_minus_1}

    prompt = Prompt.init(backbone, n_ctx=n_ctx, seed=args.seed).to(device)
    optimizer = torch.optim.SGD([prompt.ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    precision = "fp32" if not gpu else (args.reference_precision if impl == "reference" else args.precision)
    scaler = torch.amp.GradScaler("cuda") if gpu and precision == "fp16" else None
    row["precision"] = precision if gpu else "fp32"
    size = backbone.image_spec.size
    generator = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(b, v, 3, size, size, generator=generator).to(device)
    logit_scale = backbone.logit_scale
    chunk = args.text_chunk_size if impl == "pomp-gradcache" else max(num_classes + b, 1) * 2
    cfg = PretrainConfig(classes_per_step=0 if K == "all" else K, precision=precision, text_chunk_size=chunk)
    backbone.fast_text = impl != "pomp-mha"
    if impl == "pomp-compile" and not backbone.compile_text(True):
        return {**row, "status": "compile unsupported for this backbone"}
    tokens_per_step, prompts_per_step = [], []

    def official_step(labels: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        amp = autocast_for(device, precision)
        with torch.no_grad(), amp:  # the image tower every step
            image = F.normalize(backbone.encode_images(pixels.flatten(0, 1)).float(), dim=-1)
        view_labels = labels.repeat_interleave(v)
        ids = torch.cat([view_labels, negatives])  # positives WITH repeats, then the K-1 negatives
        prompts_per_step.append(len(ids))
        tokens_per_step.append(len(ids) * class_tokens.tokens.shape[1])
        optimizer.zero_grad(set_to_none=True)
        with amp:
            feats = _reference_text_features(backbone, prompt, class_tokens, ids)
        loss = local_contrast_loss(image, feats[: len(view_labels)], feats[len(view_labels):],
                                   view_labels.to(device), negatives.to(device), num_classes, logit_scale)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.detach()

    def pomp_step(labels: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        # as in pomp.train.pretrain: image tower -> encode_and_backward -> (scaler) optimizer step
        image = encode_pixels(backbone, pixels, precision).flatten(0, 1)
        view_labels = labels.repeat_interleave(v).to(device)
        ids = torch.unique(torch.cat([view_labels.cpu(), negatives]))
        chunks = torch.split(ids, cfg.text_chunk_size)
        passes = 1 if len(chunks) == 1 else 2
        prompts_per_step.append(len(ids) * passes)
        tokens_per_step.append(passes * sum(len(c) * int(class_tokens.lengths[c].max()) for c in chunks))
        optimizer.zero_grad(set_to_none=True)
        grad_scale = scaler.get_scale() if scaler is not None else 1.0
        loss = encode_and_backward(prompt, prompt, backbone, class_tokens, image, view_labels, negatives, cfg,
                                   logit_scale, grad_scale)
        if scaler is not None:
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return loss.detach()

    step = official_step if impl == "reference" else pomp_step
    meter = MemoryMeter(device)
    meter.start()
    times, cpu_times, losses = [], [], []
    try:
        for i in range(args.warmup + args.steps):
            labels = torch.randint(num_classes, (b,), generator=generator)
            negatives = sample_negatives(num_classes, k_minus_1, generator)
            if gpu:
                torch.cuda.synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            loss = step(labels, negatives)
            loss_value = float(loss)  # also synchronises
            if gpu:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
            losses.append(loss_value)
    except (torch.OutOfMemoryError, MemoryError):
        prompt.ctx.grad = None
        del optimizer
        if gpu:
            torch.cuda.empty_cache()
        peak, base = meter.peak()
        return {**row, "status": "out of memory", "peak_mem_gib": round(peak, 3), "mem_method": meter.method}
    finally:
        backbone.fast_text = True
        if impl == "pomp-compile":
            backbone.compile_text(False)
    peak, base = meter.peak()
    timed = times[args.warmup:]
    step_s = statistics.median(timed)
    return {
        **row,
        "status": "ok",
        "step_s": round(step_s, 5),
        "step_s_all": [round(t, 5) for t in timed],
        "first_step_s": round(times[0], 4),
        "cpu_s": round(statistics.median(cpu_times[args.warmup:]), 5),
        "peak_mem_gib": round(peak, 4),
        "base_mem_gib": round(base, 4),
        "mem_method": meter.method,
        "images_per_s": round(b / step_s, 2),
        "views_per_s": round(b * v / step_s, 2),
        "prompts_per_step": round(statistics.mean(prompts_per_step[args.warmup:]), 1),
        "text_tokens_per_step": round(statistics.mean(tokens_per_step[args.warmup:]), 1),
        "final_loss": round(losses[-1], 4),
        "loss_finite": all(math.isfinite(x) for x in losses),
    }


# --- driver ------------------------------------------------------------------------------------
def _configs(args) -> list[tuple[str, int | str, int]]:
    impls = args.impls.split(",")
    num_classes = args.num_classes or RECIPE["classes"]
    out = []
    for n_ctx in _n_ctxs(args):
        for K in _ks(args):
            distinct_max = (num_classes if K == "all" else min(K, num_classes)) + args.images_per_step
            for impl in impls:
                if impl == "pomp-gradcache" and distinct_max <= args.text_chunk_size:
                    continue  # one chunk: identical to `pomp`
                out.append((impl, K, n_ctx))
    return out


def _run_isolated(args, impl, K, n_ctx) -> dict:
    job = json.dumps({"impl": impl, "K": K, "n_ctx": n_ctx})
    argv = [sys.executable, str(Path(__file__).resolve())] + _passthrough(args) + ["--_child", job]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "K": K, "n_ctx": n_ctx, "device": args.device, "status": "timeout"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    status = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"failed rc={proc.returncode}: {tail[0]}"
    return {"impl": impl, "K": K, "n_ctx": n_ctx, "device": args.device, "status": status}


def _passthrough(args) -> list[str]:
    keys = ["device", "model", "ks", "n_ctx", "impls", "steps", "warmup", "images_per_step", "views",
            "num_classes", "text_chunk_size", "precision", "reference_precision", "threads", "seed"]
    out = []
    for k in keys:
        val = getattr(args, k)
        if val is not None:
            out += ["--" + k.replace("_", "-"), str(val)]
    return out + ["--isolate", "no"]


def add_ratios(rows: list[dict]) -> None:
    ref = {(r["K"], r["n_ctx"]): r for r in rows if r["impl"] == "reference" and r.get("status") == "ok"}
    for r in rows:
        base = ref.get((r["K"], r["n_ctx"]))
        if base is None or r.get("status") != "ok":
            continue
        r["speedup_vs_reference"] = round(base["step_s"] / r["step_s"], 3)
        if base["peak_mem_gib"] > 0:
            r["mem_vs_reference"] = round(r["peak_mem_gib"] / base["peak_mem_gib"], 3)


def recipe_estimate(rows: list[dict], args) -> dict:
    """Wall time of the paper's recipe from the measured step times (text + image tower + update;
    no data loading, no validation)."""
    b = args.images_per_step
    steps_one_device = RECIPE["classes"] * RECIPE["shots"] / b * RECIPE["epochs"]
    steps_per_gpu_ddp = RECIPE["classes"] * RECIPE["shots"] / (b * RECIPE["gpus"]) * RECIPE["epochs"]
    out = {"recipe": {**RECIPE, "images_per_step_measured": b, "views_measured": args.views},
           "steps_one_device": steps_one_device, "steps_per_gpu_8gpu_ddp": steps_per_gpu_ddp, "estimates": []}
    for r in rows:
        if r.get("status") != "ok" or r["K"] != RECIPE["K"]:
            continue
        hours = steps_one_device * r["step_s"] / 3600
        out["estimates"].append({"impl": r["impl"], "K": r["K"], "n_ctx": r["n_ctx"], "device": r["device"],
                                 "model": r["model"], "step_s": r["step_s"], "hours_one_device": round(hours, 3),
                                 "hours_8gpu_ddp": round(steps_per_gpu_ddp * r["step_s"] / 3600, 3)})
    ref = {e["n_ctx"]: e for e in out["estimates"] if e["impl"] == "reference"}
    for e in out["estimates"]:
        if e["n_ctx"] in ref:
            e["vs_reference"] = round(ref[e["n_ctx"]]["hours_one_device"] / e["hours_one_device"], 3)
    return out


def _fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) else "-".rjust(int(spec.split(".")[0]))


def print_table(rows: list[dict], meta: dict, recipe: dict) -> None:
    print(f"\n# device: {meta['device_name']} | model: {meta['model']} (random weights) | "
          f"{meta['images_per_step']} images x {meta['views']} views | {meta['num_classes']} class names | "
          f"threads: {meta['threads']}")
    print(f"# memory: {meta['mem_method']}")
    head = (f"{'impl':<15}{'K':>6}{'n_ctx':>6}{'prompts':>9}{'tokens':>9}{'step s':>9}{'cpu s':>8}{'x ref':>7}"
            f"{'peak GiB':>10}{'mem/ref':>8}{'img/s':>9}  status")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['impl']:<15}{str(r['K']):>6}{r['n_ctx']:>6}{_fmt(r.get('prompts_per_step'), '9.0f')}"
              f"{_fmt(r.get('text_tokens_per_step'), '9.0f')}{_fmt(r.get('step_s'), '9.3f')}"
              f"{_fmt(r.get('cpu_s'), '8.2f')}"
              f"{_fmt(r.get('speedup_vs_reference'), '7.2f')}{_fmt(r.get('peak_mem_gib'), '10.3f')}"
              f"{_fmt(r.get('mem_vs_reference'), '8.2f')}{_fmt(r.get('images_per_s'), '9.1f')}  {r.get('status')}")
    print(f"\n# recipe wall time (10,450 classes x 16 shots, 5 epochs, {recipe['recipe']['images_per_step_measured']} "
          f"images x {recipe['recipe']['views_measured']} views per step, K = {RECIPE['K']}): "
          f"{recipe['steps_one_device']:.0f} steps on one device "
          f"({recipe['steps_per_gpu_8gpu_ddp']:.0f} per GPU with 8-GPU DDP)")
    print("# = measured step time x steps, THIS device and model; excludes data loading/augmentation and validation")
    for e in recipe["estimates"]:
        ratio = f"  ({e['vs_reference']:.2f}x faster than reference)" if "vs_reference" in e and \
            e["impl"] != "reference" else ""
        print(f"  {e['impl']:<15} n_ctx {e['n_ctx']:>2}: {e['step_s']:.3f} s/step -> "
              f"{e['hours_one_device']:.2f} h on one device, {e['hours_8gpu_ddp']:.2f} h per GPU on 8{ratio}")
    if not recipe["estimates"]:
        print(f"  (no K = {RECIPE['K']} rows measured: add 1000 to --ks)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._child:
        job = json.loads(args._child)
        bench = Bench(args)
        row = run_config(bench, job["impl"], job["K"], job["n_ctx"])
        print("RESULT " + json.dumps(row), flush=True)
        return 0

    isolate = args.isolate == "yes" or (args.isolate == "auto" and not args.device.startswith("cuda"))
    configs = _configs(args)
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads of {os.cpu_count()} cores)"
    bench = None if isolate else Bench(args)
    rows = []
    t_start = time.perf_counter()
    for impl, K, n_ctx in configs:
        t0 = time.perf_counter()
        try:
            row = _run_isolated(args, impl, K, n_ctx) if isolate else run_config(bench, impl, K, n_ctx)
        except Exception as err:  # one broken configuration must not lose the others' rows
            row = {"impl": impl, "K": K, "n_ctx": n_ctx, "device": args.device,
                   "status": f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        row["config_wall_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        print(f"[{time.perf_counter() - t_start:7.1f}s] {impl} K={K} n_ctx={n_ctx}: "
              f"{row.get('step_s', '-')} s/step, peak {row.get('peak_mem_gib', '-')} GiB, {row.get('status')}",
              flush=True)
    add_ratios(rows)
    mem_method = next((r["mem_method"] for r in rows if "mem_method" in r), "-")
    meta = {"device": args.device, "device_name": device_name, "model": args.model, "torch": torch.__version__,
            "images_per_step": args.images_per_step, "views": args.views, "threads": args.threads,
            "num_classes": args.num_classes or RECIPE["classes"], "steps": args.steps, "warmup": args.warmup,
            "isolated": isolate, "mem_method": mem_method, "total_wall_s": round(time.perf_counter() - t_start, 1),
            "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv)))}
    recipe = recipe_estimate(rows, args)
    print_table(rows, meta, recipe)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows, "recipe": recipe}, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return 0 if all(r.get("status") == "ok" or "memory" in str(r.get("status")) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
