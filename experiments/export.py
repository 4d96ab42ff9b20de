"""Copy a report and the images it shows into a self-contained folder (e.g. docs/), rewriting the
links; links to files that are not images (the per-study reports, metrics) become plain text.

    python -m experiments.export results/all/mnist-quick-cnnext-cpu docs/quick-mnist
"""

import argparse
import re
import shutil
from pathlib import Path


def export(report: Path, dest: Path) -> Path:
    source = report.parent
    dest.mkdir(parents=True, exist_ok=True)

    def relink(match: re.Match) -> str:
        text, link = match[1], match[2]
        if not link.endswith(".png"):
            return text  # only the report and its pictures travel
        path = (source / link).resolve()
        parts = path.parts
        # <study>/<run-id>/plots/x.png -> <study>/<run-id>/x.png: unique per study and run (the run
        # id names dataset, preset, backend and device), so two datasets of one study never share
        # a picture.
        name = (
            "/".join(parts[-4:-2] + (parts[-1],)) if len(parts) >= 4 and parts[-2] == "plots" else parts[-1]
        )
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / name)
        return f"[{text}]({name})"

    text = re.sub(r"\[([^\]]*)\]\(([^)]+)\)", relink, report.read_text())
    out = dest / "REPORT.md"
    out.write_text(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run", type=Path, help="a study or `all` run folder (with REPORT.md)")
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    print(export(args.run / "REPORT.md", args.dest))


if __name__ == "__main__":
    main()
