"""The allocator keeps freed memory for the next step instead of faulting fresh pages in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.common.malloc_tuning import keep_freed_memory_for_reuse

# Four convolutions over a 2 × 64 × 128 × 128 activation, ten times, in the main thread or
# in another one (as a generation job runs): the allocation pattern of a denoising step in
# small. Prints the page faults of the ten passes.
WORKLOAD = """
import resource, sys, threading, torch
from services.common.malloc_tuning import keep_freed_memory_for_reuse
mode, where = sys.argv[1:3]
if mode == "tuned":
    assert keep_freed_memory_for_reuse()
torch.manual_seed(0)
layers = torch.nn.Sequential(*[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(4)])
x = torch.randn(2, 64, 128, 128)
faults = []

def work():
    with torch.no_grad():
        layers(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            layers(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

if where == "thread":
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
else:
    work()
print(faults[0])
"""


def _page_faults(mode: str, where: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", WORKLOAD, mode, where], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_repeated_tensor_work_stops_faulting_in_fresh_pages(where: str) -> None:
    default, tuned = _page_faults("default", where), _page_faults("tuned", where)
    assert tuned * 10 < default, f"page faults: {default} by default, {tuned} tuned"


def test_it_takes_effect_where_the_c_library_is_glibc() -> None:
    assert keep_freed_memory_for_reuse() is sys.platform.startswith("linux")
