"""What a zero-shot command scores side by side on the same data: each learned prompt and each hand-crafted
baseline, as `(label, build_classifier keyword arguments)` runs. `pomp eval`, `pomp benchmark` (`pomp.suites`),
`pomp segment` and `pomp detect` (`pomp.dense.run`) build their runs here, and label them alike in their result
files: `prompt:<file name>` (the path where two prompts share a name) and `baseline:<name>`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def load_classifier_runs(prompts: Sequence[str], baselines: Sequence[str]) -> list[tuple[str, dict]]:
    """One run per prompt (`{"prompt": Prompt}`), then per distinct baseline (`{"baseline": name}`).

    The prompts are loaded here (pomp's files or an official checkpoint, `pomp.interop.load_any`), before a
    command writes anything: a refused prompt raises ValueError and leaves no output behind.
    """
    from pomp.interop import load_any

    names = [Path(p).name for p in prompts]
    runs = [("prompt:" + (name if names.count(name) == 1 else str(path)), {"prompt": load_any(path)})
            for path, name in zip(prompts, names)]
    return runs + [(f"baseline:{b}", {"baseline": b}) for b in dict.fromkeys(baselines)]


def place_on(runs: list[tuple[str, dict]], backbone) -> list[tuple[str, dict]]:
    """Check each run's prompt fits `backbone` (`Prompt.check_compatible`: ValueError) and move it to the
    backbone's device; returns `runs`."""
    for _, kwargs in runs:
        if "prompt" in kwargs:
            kwargs["prompt"].check_compatible(backbone)
            kwargs["prompt"] = kwargs["prompt"].to(backbone.device)
    return runs


__all__ = ["load_classifier_runs", "place_on"]
