"""P0 audit: the repository names none of the other agents or their paths.

The forbidden names are assembled from pieces so that this file does not match itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = re.compile(
    "|".join(
        [
            "canvas" + r"[-_ ]?a\b",
            "phys" + "olympiad",
            "dhyan" + "hq",
            "dream" + "book",
            "omnitutor-" + "canvas",
        ]
    ),
    re.IGNORECASE,
)


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [ROOT / line for line in out.splitlines() if line]


def test_no_file_references_another_agent() -> None:
    hits = []
    for path in tracked_files():
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert hits == []


def test_the_audit_pattern_does_catch_the_names() -> None:
    samples = ["see /home/ubuntu/omnitutor/canv" + "as-a/", "PHYS" + "OLYMPIAD", "Dream" + "Book"]
    assert all(FORBIDDEN.search(s) for s in samples)
