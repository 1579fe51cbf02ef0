"""Who imports whom inside cifar_core, and what importing one module loads.

    python benchmarks/import_graph.py [MODULE]

Prints one line per module with the cifar_core modules it imports at module level
(``from .x import``), then the cifar_core modules that ``import cifar_core.MODULE``
(default: runs) loads, measured in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cifar_core"


def direct_imports(path: Path) -> list[str]:
    """The sibling modules a module imports at its top level."""
    modules = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            # from .x import y names x; from . import x names x itself
            modules |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return sorted(modules)


def loaded_by(module: str) -> list[str]:
    """The cifar_core modules in sys.modules after importing ``cifar_core.<module>``."""
    code = (f"import sys, cifar_core.{module}; "
            "print(' '.join(sorted(m[11:] for m in sys.modules if m.startswith('cifar_core.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, check=True,
                         capture_output=True, text=True).stdout
    return out.split()


def main() -> None:
    module = sys.argv[1] if len(sys.argv) > 1 else "runs"
    for path in sorted(PACKAGE.glob("*.py")):
        print(f"{path.stem:12} -> {', '.join(direct_imports(path)) or '-'}")
    print(f"\nimport cifar_core.{module} loads: {', '.join(loaded_by(module))}")


if __name__ == "__main__":
    main()
