"""Old names that still work for a while, with a DeprecationWarning: keyword arguments that were renamed, and
module attributes that moved to another module."""

from __future__ import annotations

import functools
import importlib
import warnings


def renamed_keywords(**new_by_old: str):
    """Decorator: a call that passes a keyword by its old name (`init=` for `words=`) gets it under the new name,
    with a DeprecationWarning naming both. Passing both names is a TypeError."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for old, new in new_by_old.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{func.__qualname__}() got {old}= and {new}=; {old} is the old name of "
                                        f"{new}: give {new}= only")
                    warnings.warn(f"{func.__qualname__}({old}=...) is deprecated: pass {new}=...", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper

    return decorate


def moved_names(module: str, new_homes: dict[str, str]):
    """A module `__getattr__` for names that moved out of `module`: `new_homes` maps each old name to the module
    that now defines it (`{"load_any": "pomp.interop"}`); the name is looked up there on first use, with a
    DeprecationWarning. The new home is imported by its name, so the old module does not depend on it: a module
    that moved names upward (to one that imports it) stays below it in the import graph."""

    def __getattr__(name: str):
        if name not in new_homes:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} moved to {new_homes[name]}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new_homes[name]), name)

    return __getattr__
