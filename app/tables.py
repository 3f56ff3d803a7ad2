"""The one way the app shows a table: readable labels with units, "—" for missing, nothing hidden.

:func:`show_table` wraps ``st.dataframe`` around :func:`core.tables.readable_table`: column
headers come from the one registry (:data:`core.tables.COLUMNS`), each header's tooltip says
what the column means, floats keep their type (sortable) with 4 significant digits, missing
values show as "—", and a table wider than :data:`WIDE` columns says that it scrolls sideways.
"""

from __future__ import annotations

import streamlit as st

from core.tables import MISSING, column_info, column_label, readable_table

__all__ = ("WIDE", "column_label", "show_table", "table_config", "wide_note")

WIDE = 7  # more columns than this: say that the table scrolls sideways


def table_config(frame) -> dict:
    """``column_config`` for the readable copy of ``frame``: help text per column, 4 significant digits for floats."""
    shown = readable_table(frame)
    config = {}
    for key, label in zip(frame.columns, shown.columns):
        info = column_info(key)
        kind = frame[key].dtype.kind
        helptext = info.help or None
        if kind == "f":
            config[label] = st.column_config.NumberColumn(label, help=helptext, format="%.4g")
        elif helptext:
            config[label] = st.column_config.Column(label, help=helptext)
    return config


def wide_note(frame) -> str | None:
    """The caption for a wide table ("12 columns: scroll sideways ..."), None for a narrow one."""
    n = frame.shape[1]
    if n <= WIDE:
        return None
    return (f"{n} columns: scroll sideways to see them all (none is hidden); hover a header for its meaning. "
            f"“{MISSING}” marks a value that is missing or undefined.")


def show_table(frame, *, key: str | None = None, **kwargs):
    """``st.dataframe`` of ``frame`` with readable labels (see the module); returns what ``st.dataframe`` returns.

    ``kwargs`` go to ``st.dataframe`` (``height``, ``hide_index``, ``on_select``, ...); a
    ``column_config`` given there is merged over the default one (keys are readable labels).
    """
    note = wide_note(frame)
    if note:
        st.caption(note)
    config = {**table_config(frame), **(kwargs.pop("column_config", None) or {})}
    return st.dataframe(readable_table(frame), key=key, placeholder=MISSING, column_config=config, **kwargs)
