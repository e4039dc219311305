"""Write the text corpus of specs/gpt_char.yaml: the English of Python's own documentation.

    python specs/make_text.py                    # -> specs/data/pydoc_topics.txt (about 0.46 MB)
    python specs/make_text.py OUT.txt

`pydoc_data.topics` ships with every CPython (it is what `help("if")` prints): prose about the
language with code examples, so nothing is downloaded. The topics are written in sorted order,
so the file is the same on every machine with the same Python version.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def write_text(out: Path) -> Path:
    """Write every pydoc topic, in sorted order, to `out` (UTF-8); returns `out`."""
    from pydoc_data.topics import topics

    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(topics[name].rstrip("\n") + "\n\n" for name in sorted(topics))
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=Path(__file__).parent / "data" / "pydoc_topics.txt")
    out = write_text(parser.parse_args().out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
