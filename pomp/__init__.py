"""pomp: POMP prompt pre-training for vision-language models (arXiv 2304.04704)."""

__version__ = "0.1.0"

from pomp import loss  # noqa: E402
from pomp.backbones import Backbone, load_backbone  # noqa: E402
from pomp.prompt import ClassTokens, Prompt  # noqa: E402

__all__ = ["Backbone", "ClassTokens", "Prompt", "load_backbone", "loss", "__version__"]
