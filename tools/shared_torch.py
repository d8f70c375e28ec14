"""Install torch and numpy once into a folder that every tox environment shares.

tox runs the version matrix (SpikingJelly 0.0.0.0.14 / 2.x x snnTorch 0.9 / 1.x) in
four environments; installing torch into each would copy it four times. Instead each
environment puts this folder on PYTHONPATH (tox.ini) and calls this script, which
installs into it once, under a file lock so parallel tox runs do not race.

Usage: python tools/shared_torch.py TARGET_DIR [TORCH_SPEC]
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path


def main() -> int:
    target = Path(sys.argv[1])
    spec = sys.argv[2] if len(sys.argv) > 2 else "torch==2.13.0"
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = target / f".installed-{spec.replace('/', '_')}"
    with open(target.parent / ".shared-torch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 "--target", str(target), "--upgrade", spec, "numpy"],
                check=True,
            )
            stamp.touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
