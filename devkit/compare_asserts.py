"""For a refactor: every assertion of the tests at an earlier commit is still in the
tests now, word for word (as Python parses it), wherever the file went.

    git worktree add /tmp/before REV
    .venv/bin/python devkit/compare_asserts.py /tmp/before/tests tests

Prints the counts and each earlier assertion that is gone; exits 1 if any is.
Assertions moved into tests/helpers.py or conftest.py count as kept.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def assertions(root: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Assert) or (
                isinstance(node, ast.Call) and ast.unparse(node.func) == "pytest.raises"
            ):
                found.setdefault(ast.unparse(node), []).append(
                    f"{f.relative_to(root)}:{node.lineno}"
                )
    return found


def main(before: str, after: str) -> int:
    old, new = assertions(Path(before)), assertions(Path(after))
    gone = [k for k in old if k not in new]
    print(
        f"assertions before {sum(map(len, old.values()))}, now {sum(map(len, new.values()))}; "
        f"gone: {len(gone)}"
    )
    for k in gone:
        print(f"  {old[k][0]}: {k[:200]}")
    return 1 if gone else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
