"""Old names of public keyword arguments, still accepted for a while with a DeprecationWarning."""

from __future__ import annotations

import functools
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
