"""Make sure Debian's Chromium is installed for the browser check (never `playwright install`).

Playwright's Python package drives the system browser through ``executable_path``;
its own browser download needs a network the CI machines do not have.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    if os.path.exists(CHROMIUM):
        return 0
    if not shutil.which("apt-get"):
        print("The browser check needs Chromium at /usr/bin/chromium; install your system's chromium package.",
              file=sys.stderr)
        return 1
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("installing Debian's chromium for the browser check (about 30 s) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        if subprocess.run(sudo + cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"could not run {' '.join(cmd)}: install chromium yourself and re-run", file=sys.stderr)
            return 1
    return 0 if os.path.exists(CHROMIUM) else 1


if __name__ == "__main__":
    sys.exit(main())
