"""Text from a spec, a file name or data, made safe to print to a terminal.

A file name or spec string may hold escape sequences (`ESC ] 0 ; title BEL` sets the window title,
others move the cursor or rewrite what was printed) and rich markup (`[link=...]`, `[/]`). Every
printer passes what it echoes through `printable` (plain output) or `console_text` (rich output
with markup), so such text is shown, never obeyed.
"""
from __future__ import annotations

import os
import shutil
import sys

# Kept as they are: line breaks and tabs lay the output out.
_LAYOUT = {"\n", "\t"}


def printable(text: object) -> str:
    """`text` with every control character (C0, DEL, C1; ESC above all) and Unicode line or paragraph
    separator written as a visible escape like `\\x1b`, as `repr` writes it; newlines and tabs kept."""
    text = str(text)
    if text.isprintable() or all(character.isprintable() or character in _LAYOUT for character in text):
        return text
    return "".join(character if character.isprintable() or character in _LAYOUT else _escaped(character)
                   for character in text)


def console_text(text: object) -> str:
    """`printable(text)` with rich markup escaped, for a rich console that reads markup."""
    from rich.markup import escape

    return escape(printable(text))


def _escaped(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def output_width() -> int | None:
    """How wide a table printed to stdout may be: the terminal's width when stdout is one, else
    `COLUMNS` when it is set (a pipe or a file), else None (as wide as the table's cells)."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() else None
