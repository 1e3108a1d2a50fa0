"""Refresh the site's vendored JavaScript from the npm registry (run by hand, rarely).

The site must render with no network, so MathJax 3 and the ipywidgets HTML
manager are served from ``book/_vendor/`` (committed) instead of a CDN.
This script re-creates that folder from pinned npm packages, checking each
tarball's integrity hash before anything is extracted.

    python tools/vendor_assets.py      # needs npm and the npm registry
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "book" / "_vendor"

# name@version -> (sha512 integrity as npm reports it, {path in package: path under book/_vendor})
PACKAGES = {
    "mathjax@3.2.2": (
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        {"es5/tex-chtml.js": "mathjax/tex-chtml.js",
         "es5/input/tex/extensions": "mathjax/input/tex/extensions",
         "es5/output/chtml/fonts/woff-v2": "mathjax/output/chtml/fonts/woff-v2",
         "es5/a11y": "mathjax/a11y",
         "es5/ui": "mathjax/ui",
         "LICENSE": "mathjax/LICENSE"},
    ),
    # embed.js is the non-AMD bundle: it needs no require.js, but it does fetch
    # Font Awesome fonts from its own folder, so those are vendored too.
    "@jupyter-widgets/html-manager@1.0.15": (
        "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        {"dist/embed.js": "widgets/embed.js", "dist/embed.js.LICENSE.txt": "widgets/embed.js.LICENSE.txt",
         # embed.js loads Font Awesome's fonts (for widget icons) from beside itself.
         "dist/*.woff2": "widgets/", "dist/*.woff": "widgets/", "dist/*.ttf": "widgets/"},
    ),
}


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for spec, (integrity, files) in PACKAGES.items():
            out = subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, check=True,
                                 capture_output=True, text=True).stdout.split()[-1]
            got = _integrity(tmp / out)
            if got != integrity:
                raise SystemExit(f"{spec}: integrity mismatch, expected {integrity}, got {got}")
            unpacked = tmp / spec.replace("/", "_")
            with tarfile.open(tmp / out) as tar:
                tar.extractall(unpacked, filter="data")
            for src, dst in files.items():
                if "*" in src:  # a glob: copy each match into the folder dst
                    for match in sorted((unpacked / "package").glob(src)):
                        (VENDOR / dst).mkdir(parents=True, exist_ok=True)
                        shutil.copy2(match, VENDOR / dst / match.name)
                    continue
                source, target = unpacked / "package" / src, VENDOR / dst
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                target.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
            print(f"vendored {spec} ({got})")


if __name__ == "__main__":
    main()
