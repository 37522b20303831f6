"""pomp's version, in a module of its own: the package, the CLI and the prompt files read it without
importing anything else."""

__version__ = "0.1.0"
