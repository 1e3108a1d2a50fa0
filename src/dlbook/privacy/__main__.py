"""``python -m dlbook.privacy``: the script each process of ``run_federated`` runs (see ``federated``)."""

import os
import sys

from dlbook.privacy.federated import _federated_main

if __name__ == "__main__":
    _federated_main()
    # Every collective is done and the process group destroyed. Leave without running the interpreter's
    # teardown, where gloo's helper threads can be destroyed while still joinable ("terminate called
    # without an active exception", seen as a SIGABRT of one rank under load).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
