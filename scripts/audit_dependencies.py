"""Summarises a pip-audit JSON report (`make audit`): fails on a finding and on a package
that could not be checked, except local builds (e.g. torch 2.13.0+cpu) that PyPI cannot know,
which are listed for a check by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(report: Path) -> int:
    deps = json.loads(report.read_text())["dependencies"]
    found = [
        (d["name"], d["version"], v["id"], v["fix_versions"])
        for d in deps
        for v in d.get("vulns", [])
    ]
    local = [d["name"] for d in deps if "+" in d.get("skip_reason", "")]
    unchecked = [d["name"] for d in deps if "skip_reason" in d and d["name"] not in local]
    for name, version, advisory, fixes in found:
        sys.stdout.write(f"vulnerable: {name} {version} {advisory} (fixed in {fixes})\n")
    checked = len(deps) - len(local) - len(unchecked)
    sys.stdout.write(f"{checked} packages checked; {len(found)} findings\n")
    if local:
        sys.stdout.write(f"local builds, not on PyPI (check by hand): {', '.join(local)}\n")
    if unchecked:
        sys.stderr.write(f"not checked: {', '.join(unchecked)}\n")
        return 1
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
