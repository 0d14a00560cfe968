"""A DataTable kept in step with keyed data: rows are added, changed and removed in place.

Rebuilding a table of 10,000 pending jobs for every change would make the interface lag
and lose the cursor; here a change to one job touches one row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from ..model import Cells, Stamp

T = TypeVar("T")


class KeyedTable(DataTable[Text], Generic[T]):
    """Rows keyed by event id, each made by ``make`` from a value compared with ``==``."""

    # DataTable's own binding, shown in the footer: it posts RowSelected.
    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Details")]

    def __init__(self, columns: Sequence[tuple[str, str, int | None]],
                 make: Callable[[T], Cells], *, id: str | None = None,
                 row_height: int | None = 1) -> None:
        """``row_height=None`` fits each row to its wrapped cells."""
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._make = make
        self._row_height = row_height
        self._values: dict[str, T] = {}
        self._column_keys = [key for _, key, _ in columns]
        for label, key, width in columns:
            self.add_column(label, key=key, width=width)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def value(self, key: str) -> T | None:
        return self._values.get(key)

    def keys(self) -> list[str]:
        return list(self._values)

    def sync(self, values: Mapping[str, T]) -> bool:
        """Make the table show exactly ``values``: new keys appended, gone keys removed.

        True if a row was added (and the order may need restoring).
        """
        for key in [k for k in self._values if k not in values]:
            self.discard(key)
        added = False
        for key, value in values.items():
            added = key not in self._values or added
            self.upsert(key, value)
        return added

    def upsert(self, key: str, value: T) -> None:
        old = self._values.get(key)
        if old is None:
            self._values[key] = value
            self.add_row(*self._make(value), key=key, height=self._row_height)
            return
        if old == value:
            return
        self._values[key] = value
        cells = zip(self._make(old), self._make(value), strict=True)
        for column, (before, after) in zip(self._column_keys, cells, strict=True):
            if before.plain != after.plain or before.style != after.style:
                self.update_cell(key, column, after)

    def discard(self, key: str) -> None:
        if self._values.pop(key, None) is not None:
            self.remove_row(key)

    def sort_by_time(self, column: str) -> None:
        """Newest first, by the timestamp of a :class:`Stamp` column."""
        self.sort(column, key=_stamp_key, reverse=True)

    def selected_key(self) -> str | None:
        if not self._values or self.cursor_row < 0 or self.cursor_row >= self.row_count:
            return None
        row_key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key
        return None if row_key.value is None else str(row_key.value)


def _stamp_key(cell: Any) -> float:
    return cell.timestamp if isinstance(cell, Stamp) else 0.0
