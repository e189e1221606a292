"""The plain-PyTorch example of docs/plain_pytorch.md, run as written, without Avalanche."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "plain_pytorch.md"


def code_blocks(text: str) -> tuple[str, str]:
    """The page's Python example and the output block after it."""
    python = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    plain = re.findall(r"```text\n(.*?)```", text, flags=re.S)
    assert len(python) == 1 and len(plain) == 1, "the page holds one example and its output"
    return python[0], plain[0]


def test_the_documented_loop_trains_sparse_and_never_imports_avalanche():
    example, expected_output = code_blocks(DOC.read_text())
    check = (
        "\nimport sys\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'avalanche')\n"
        "print('avalanche modules:', len(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", example + check], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_output + "avalanche modules: 0\n"


def test_the_core_imports_no_avalanche_module():
    code = (
        "import avalanche_sparcl.sparse, avalanche_sparcl.data_removal, sys; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'avalanche'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout == "[]\n"
