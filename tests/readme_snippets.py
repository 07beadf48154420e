"""The README's Python blocks, found by the section they stand in, run as written.

Used by tests/test_readme.py and, with nothing but the package installed, by the
`install_check` nox session (`python tests/readme_snippets.py "The model"`): it
needs the standard library only, so a single-backend install is tested as a user
gets it. A line `print(expr)  # text` must print `text`.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str | None = None) -> dict[str, list[str]]:
    """The ```python blocks of the README, keyed by the `## ` heading above them."""
    text = README.read_text() if text is None else text
    blocks: dict[str, list[str]] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        heading = section.splitlines()[0].strip()
        found = re.findall(r"```python\n(.*?)```", section, flags=re.S)
        if found:
            blocks[heading] = found
    return blocks


def expected_prints(code: str) -> list[str]:
    """What the `print(...)  # text` lines of `code` say they print."""
    return re.findall(r"^\s*print\(.*\)\s*#\s*(.*?)\s*$", code, flags=re.M)


def run_block(code: str, name: str = "README") -> tuple[list[str], dict]:
    """Executes `code` as a script: what it printed (checked against its comments) and
    the names it defined."""
    printed: list[str] = []

    def record(*args, sep=" ", **kwargs):
        printed.append(sep.join(map(str, args)))

    namespace = {"__name__": "__main__", "print": record}
    exec(compile(code, f"<{name}>", "exec"), namespace)
    expected = expected_prints(code)
    if printed != expected:
        raise AssertionError(f"{name} printed {printed}, its comments say {expected}")
    return printed, namespace


def main(argv: list[str]) -> int:
    """`readme_snippets.py HEADING [--only-backend NAME]`: runs that section's blocks."""
    heading, *rest = argv
    if rest[:1] == ["--only-backend"]:
        others = [b for b in ("torch", "jax", "tensorflow") if b != rest[1]]
        installed = [b for b in others if importlib.util.find_spec(b) is not None]
        if installed:
            raise SystemExit(f"expected a {rest[1]}-only install, but {installed} are installed")
    for index, code in enumerate(python_blocks()[heading]):
        printed, _ = run_block(code, f"README '{heading}' block {index + 1}")
        print(f"README '{heading}' block {index + 1} ran; printed {printed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
