"""tests/vm/guest runs only inside the VM (`test_cachefiles_vm.py` boots it): elsewhere
its tests are not collected, since no kernel here has what they need."""

from __future__ import annotations

import os

collect_ignore = [] if os.environ.get("FERRY_VM_GUEST") == "1" else ["guest"]
