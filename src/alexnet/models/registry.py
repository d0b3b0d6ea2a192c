"""A small timm-style model registry: builders register under a name, `create_model` looks them up.

A builder is a function `fn(*, num_classes: int, image_size: int, **options) -> nn.Module`.
Its keyword parameters after `num_classes` and `image_size` are the model's options; the
registry rejects option names the builder does not declare, and the builder itself checks
option values, so every mistake a user can make surfaces as one `AlexnetError` line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import AlexnetError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    default_image_size: int
    options: tuple[str, ...] | None  # None: the builder takes **kwargs, so any name is passed on


_REGISTRY: dict[str, _Entry] = {}


def _declared_options(builder: Builder) -> tuple[str, ...] | None:
    params = inspect.signature(builder).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.name not in ("num_classes", "image_size"))


def register_model(name: str, *, default_image_size: int) -> Callable[[Builder], Builder]:
    """Decorator: register `builder` as model `name` whose native input side is `default_image_size`.

    Registering the same name twice is a programming error and raises ValueError.
    """

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, default_image_size, _declared_options(builder))
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise AlexnetError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def default_image_size(name: str) -> int:
    """The input side (pixels) model `name` is designed for, used when no image size is given."""
    return _entry(name).default_image_size


def _check_positive_int(value: Any, option: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AlexnetError(f"{option} must be a positive integer, got {value!r}")


def create_model(name: str, *, num_classes: int = 10, image_size: int | None = None, **kwargs: Any) -> nn.Module:
    """Build model `name` for `num_classes` classes and square inputs of side `image_size`.

    `image_size=None` uses the model's default (see `default_image_size`). Extra keyword
    arguments are the model's options (e.g. `norm`, `groups`, `dropout`). An unknown model,
    an option the model does not have, or a bad option value raises `AlexnetError`.
    """
    entry = _entry(name)
    _check_positive_int(num_classes, "num_classes")
    size = entry.default_image_size if image_size is None else image_size
    _check_positive_int(size, "image_size")
    if entry.options is not None:
        unknown = sorted(set(kwargs) - set(entry.options))
        if unknown:
            raise AlexnetError(
                f"model {name!r} has no option(s) {', '.join(unknown)}; "
                f"its options are: {', '.join(entry.options) or '(none)'}"
            )
    return entry.builder(num_classes=num_classes, image_size=size, **kwargs)
