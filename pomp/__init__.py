"""pomp: POMP prompt pre-training for vision-language models (arXiv 2304.04704).

The public names load on first use (PEP 562), so `import pomp` imports no torch:

    pomp.load_backbone(name)   a frozen backbone (`pomp.backbones`)
    pomp.Prompt                the learned context (`pomp.prompt`)
    pomp.loss                  local contrast and local correction

and any submodule (`pomp.data`, `pomp.io`...) is importable as an attribute.
"""

import importlib
import importlib.util

from pomp.version import __version__

__all__ = ["Backbone", "ClassTokens", "Prompt", "load_backbone", "loss", "__version__"]


def __getattr__(name: str):
    if name in ("Backbone", "load_backbone"):
        from pomp.backbones import Backbone, load_backbone

        return {"Backbone": Backbone, "load_backbone": load_backbone}[name]
    if name in ("ClassTokens", "Prompt"):
        from pomp.prompt import ClassTokens, Prompt

        return {"ClassTokens": ClassTokens, "Prompt": Prompt}[name]
    if name == "loss":
        import pomp.loss as loss

        return loss
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
