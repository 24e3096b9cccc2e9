"""The Python code blocks of a Markdown page, run in order in one namespace, as a reader would
paste them (used by ``tests/test_docs.py``; ``python tests/docs_blocks.py PAGE.md`` runs one)."""

import re
import sys

FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The ``python`` fenced blocks of ``text``, without the ones that only include a file
    (``--8<--`` snippets: the included files are run by their own tests)."""
    blocks = [m.group(1) for m in FENCE.finditer(text)]
    return [b for b in blocks if not b.lstrip().startswith("--8<--")]


def run_page(path: str) -> dict:
    namespace: dict = {"__name__": "__main__"}
    with open(path) as f:
        for i, block in enumerate(python_blocks(f.read())):
            exec(compile(block, f"{path} block {i + 1}", "exec"), namespace)
    return namespace


if __name__ == "__main__":
    run_page(sys.argv[1])
