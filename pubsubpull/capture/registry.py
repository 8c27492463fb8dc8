"""Which models are published, and which of their columns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from django.core.exceptions import ImproperlyConfigured
from django.db import models

# The columns that are never worth publishing unless asked for by name.
DEFAULT_EXCLUDE = {"auth.user": ("password",)}


@dataclass(frozen=True)
class Registration:
    """How one model is published."""

    model: type[models.Model]
    fields: tuple[str, ...] | None
    exclude: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.model._meta.label_lower

    @property
    def table(self) -> str:
        return self.model._meta.db_table

    @property
    def pk_column(self) -> str:
        return _column(self.model._meta.pk)

    @property
    def published_fields(self) -> list[models.Field]:
        """Concrete fields whose values are stored and served, in model order."""
        opts = self.model._meta
        chosen = []
        for field in opts.concrete_fields:
            if field.primary_key:
                chosen.append(field)
            elif self.fields is not None:
                if field.name in self.fields or field.attname in self.fields:
                    chosen.append(field)
            elif field.name not in self.exclude and field.attname not in self.exclude:
                chosen.append(field)
        return chosen

    @property
    def published_columns(self) -> list[str]:
        return [_column(f) for f in self.published_fields]

    @property
    def excluded_columns(self) -> list[str]:
        """Columns the trigger removes before anything is written."""
        published = set(self.published_columns)
        return [_column(f) for f in self.model._meta.concrete_fields if f.column not in published]


def _column(field: models.Field) -> str:
    # Every field here is concrete, and Django calls a field concrete when it has a
    # column (Field.concrete is ``column is not None``).
    return cast(str, field.column)


_registry: dict[str, Registration] = {}


def _check_names(model: type[models.Model], names: Iterable[str], argument: str) -> None:
    opts = model._meta
    known = {f.name for f in opts.concrete_fields} | {f.attname for f in opts.concrete_fields}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ImproperlyConfigured(
            f"pubsubpull.register({opts.label}, {argument}=...) names "
            f"{', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not a "
            f"concrete field of {opts.label}. Choose from: {', '.join(sorted(known))}."
        )
    if argument == "exclude" and (opts.pk.name in names or opts.pk.attname in names):
        raise ImproperlyConfigured(
            f"pubsubpull.register({opts.label}, exclude=...) cannot exclude the "
            f"primary key {opts.pk.name!r}: every change is identified by it."
        )


def register(model=None, *, fields: Iterable[str] | None = None, exclude: Iterable[str] = ()):
    """Publish every change to ``model``'s table.

    Use it as a call or as a class decorator::

        pubsubpull.register(Customer, exclude=["notes"])

        @pubsubpull.register(fields=["name", "country"])
        class Customer(models.Model): ...

    ``fields`` publishes only those fields (the primary key always); ``exclude``
    publishes all but those. Excluded values are removed by the trigger before
    anything is written. ``auth.User``'s password is excluded by default.
    Run ``makemigrations`` afterwards: it writes the migration that installs
    the trigger.
    """
    if fields is not None and exclude:
        raise ImproperlyConfigured(
            "pubsubpull.register() takes fields= or exclude=, not both: fields= "
            "already publishes only what it names."
        )
    if isinstance(fields, str) or isinstance(exclude, str):
        raise ImproperlyConfigured(
            "pubsubpull.register(fields=..., exclude=...) take lists of field names, "
            "not a single string."
        )

    def decorate(model_class):
        if not (isinstance(model_class, type) and issubclass(model_class, models.Model)):
            raise ImproperlyConfigured(
                f"pubsubpull.register() takes a model class, not {model_class!r}."
            )
        opts = model_class._meta
        if opts.abstract or opts.proxy or not opts.managed:
            kind = "abstract" if opts.abstract else "proxy" if opts.proxy else "unmanaged"
            raise ImproperlyConfigured(
                f"pubsubpull.register({opts.label}): {kind} models have no table of their "
                "own to publish; register the concrete model."
            )
        field_names = tuple(fields) if fields is not None else None
        excluded = tuple(exclude)
        if field_names is None and not excluded:
            excluded = DEFAULT_EXCLUDE.get(opts.label_lower, ())
        _check_names(model_class, field_names or (), "fields")
        _check_names(model_class, excluded, "exclude")
        _registry[opts.label_lower] = Registration(model_class, field_names, excluded)
        return model_class

    if model is None:
        return decorate
    return decorate(model)


def unregister(model: type[models.Model]) -> None:
    """Stop publishing ``model`` (run ``makemigrations`` to remove its trigger)."""
    _registry.pop(model._meta.label_lower, None)


def registrations() -> list[Registration]:
    """All registrations, sorted by model label."""
    return [_registry[label] for label in sorted(_registry)]


def get_registration(model_or_label: type[models.Model] | str) -> Registration | None:
    """The registration of a model (class or ``app_label.model_name``), or None."""
    if isinstance(model_or_label, str):
        label = model_or_label.lower()
    else:
        label = model_or_label._meta.label_lower
    return _registry.get(label)
