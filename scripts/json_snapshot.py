"""Write `tracemortem report X --format json` of every sample and real trace input into a folder,
or compare two such folders: `python scripts/json_snapshot.py write DIR [CLI-OPTIONS...]`,
`python scripts/json_snapshot.py compare BEFORE AFTER`. Used to check that a change to the
analysis pipeline leaves its output byte-identical (docs/scale.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real_traces"


def inputs() -> list[Path]:
    found = sorted((ROOT / "sample_traces").iterdir())
    if REAL.is_dir():
        for entry in sorted(REAL.iterdir()):
            if entry.name == "more":
                found += sorted(entry.iterdir())
            elif entry.is_dir() or (entry.name.endswith((".json.gz", ".json")) and "reference" not in entry.name):
                found.append(entry)
    return found


def name_of(path: Path) -> str:
    return str(path.relative_to(path.parents[1] if path.parent.name == "more" else path.parent)).replace("/", "__")


def write(folder: Path, options: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tracemortem.cli", "report"]
    for path in inputs():
        done = subprocess.run(
            [*command, str(path), "--format", "json", "-o", "-", "--fail-on", "never", *options],
            capture_output=True,
        )
        (folder / f"{name_of(path)}.json").write_bytes(done.stdout + f"\nexit {done.returncode}\n".encode())
        print(name_of(path), done.returncode, done.stderr.decode(errors="replace").strip()[-200:])


def compare(before: Path, after: Path) -> int:
    differ = 0
    for old in sorted(before.glob("*.json")):
        new = after / old.name
        same = new.exists() and new.read_bytes() == old.read_bytes()
        differ += not same
        print(("same   " if same else "DIFFERS"), old.name)
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(Path(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
