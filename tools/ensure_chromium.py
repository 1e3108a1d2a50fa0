"""Make sure Debian's Chromium and a Chinese font are installed for the browser check.

Playwright's Python package drives the system browser through ``executable_path``
(never `playwright install`: its own browser download needs a network the CI
machines do not have). The glossary is bilingual, and Debian's Chromium has no
font with Chinese glyphs by itself, so a small one (WenQuanYi Micro Hei, 1.6 MB)
comes with it; the browser check fails if the glossary shows empty boxes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

CHROMIUM = "/usr/bin/chromium"
CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
PACKAGES = ["chromium", "fonts-wqy-microhei"]


def main() -> int:
    if os.path.exists(CHROMIUM) and os.path.exists(CJK_FONT):
        return 0
    if not shutil.which("apt-get"):
        print("The browser check needs Chromium at /usr/bin/chromium and a Chinese font; install your system's "
              "chromium and fonts-wqy-microhei packages.",
              file=sys.stderr)
        return 1
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("installing Debian's chromium and a Chinese font for the browser check (about 30 s) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        if subprocess.run(sudo + cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"could not run {' '.join(cmd)}: install chromium yourself and re-run", file=sys.stderr)
            return 1
    return 0 if os.path.exists(CHROMIUM) and os.path.exists(CJK_FONT) else 1


if __name__ == "__main__":
    sys.exit(main())
