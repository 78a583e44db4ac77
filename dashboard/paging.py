"""Keyset paging for the console's long lists (instances, audit entries, sequences).

A page is the rows after (or before) one row's sort key in the list's order, never an OFFSET:
the database walks an index from that key, so page 500 costs what page 1 costs, and rows
arriving meanwhile do not shift what the next page shows. The cursor in the URL is the key of
the page's last (or first) row, `<value>~<pk>`; the primary key breaks ties between equal
values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

from django.db import models
from django.db.models import QuerySet

M = TypeVar("M", bound=models.Model)


@dataclass
class Page(Generic[M]):
    rows: list[M]
    next_url: str  # "" on the last page
    prev_url: str  # "" on the first page
    first_url: str  # the list's start with the same filters ("" when this is it)


def _cursor(row: models.Model, field: str) -> str:
    value = getattr(row, field)
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return f"{text}~{row.pk}"


def _parse(cursor: str, field: object) -> tuple[Any, str] | None:
    """The (value, pk) a cursor names, or None for one the hub did not make."""
    value, sep, pk = cursor.rpartition("~")
    if not sep or not pk or len(cursor) > 300:
        return None
    if isinstance(field, models.DateTimeField):
        try:
            return datetime.fromisoformat(value), pk
        except ValueError:
            return None
    return value, pk


def keyset_page(
    rows: QuerySet[M],
    params: dict[str, str],
    *,
    size: int,
    field: str = "created",
    ascending: bool = False,
) -> Page[M]:
    """One page of `rows` in `field` order (then pk), from the `next` or `prev` cursor in
    `params` (the request's filters, which the page's links keep). An unreadable cursor is the
    first page."""
    model_field = rows.model._meta.get_field(field)
    filters = {k: v for k, v in params.items() if v and k not in ("next", "prev")}
    forward, back = ("gt", "lt") if ascending else ("lt", "gt")
    order = [field, "pk"] if ascending else [f"-{field}", "-pk"]
    reverse_order = [f"-{field}", "-pk"] if ascending else [field, "pk"]

    def beyond(rows: QuerySet[M], key: tuple[Any, str], op: str) -> QuerySet[M]:
        # `value op= v` and not (`value = v` with the pk on the wrong side): the first part
        # is a range the index on `field` serves; `(value op v) OR (value = v AND pk op p)`
        # reads the same rows but makes SQLite scan the whole table.
        value, pk = key
        wrong_side = "gte" if op == "lt" else "lte"
        return rows.filter(**{f"{field}__{op}e": value}).exclude(
            **{field: value, f"pk__{wrong_side}": pk}
        )

    nxt = _parse(params.get("next", ""), model_field)
    prv = _parse(params.get("prev", ""), model_field) if nxt is None else None
    if prv is not None:
        found = list(beyond(rows, prv, back).order_by(*reverse_order)[: size + 1])
        more_before, more_after = len(found) > size, True
        items = found[:size][::-1]
    else:
        if nxt is not None:
            rows = beyond(rows, nxt, forward)
        found = list(rows.order_by(*order)[: size + 1])
        more_before, more_after = nxt is not None, len(found) > size
        items = found[:size]

    def link(**cursor: str) -> str:
        return "?" + urlencode({**filters, **cursor})

    return Page(
        rows=items,
        next_url=link(next=_cursor(items[-1], field)) if items and more_after else "",
        prev_url=link(prev=_cursor(items[0], field)) if items and more_before else "",
        first_url=link() if nxt is not None or prv is not None else "",
    )
