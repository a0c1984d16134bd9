import os
import subprocess
import sys
import time

import pytest

from sam3_lora import cpu


def test_usable_cpus_follow_the_affinity_mask():
    assert cpu.usable_cpus() == min(len(os.sched_getaffinity(0)), cpu.usable_cpus())
    assert cpu.usable_cpus() >= 1


def test_busy_cpus_see_a_process_that_spins():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat on this system")
    quiet = cpu.busy_cpus(0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        busy = cpu.busy_cpus(0.3)
    finally:
        spinner.kill()
        spinner.wait()
    # One spinning process keeps about one CPU busy, whatever else runs (other jobs share
    # this machine, so only the difference is asserted, with a wide margin).
    assert busy > 0.5 and busy >= quiet - 0.5


def test_free_cpus_leave_the_busy_ones(monkeypatch):
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 4)
    monkeypatch.setattr(cpu, "busy_cpus", lambda seconds=0: 1.2)
    assert cpu.free_cpus() == 3
    monkeypatch.setattr(cpu, "busy_cpus", lambda seconds=0: 7.0)   # busier than ours: still 1
    assert cpu.free_cpus() == 1


def test_share_cpu_keeps_what_the_user_set_and_fills_the_rest(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(cpu, "free_cpus", lambda: 1)
    environ = {}
    assert cpu.share_cpu(environ) == 1
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    environ = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "6"}
    assert cpu.share_cpu(environ) == 6
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "6"}


def test_share_cpu_leaves_a_process_that_loaded_torch_alone():
    import torch  # noqa: F401 - the point: torch is loaded

    environ = {}
    assert cpu.share_cpu(environ) is None and environ == {}


def test_a_command_sets_passive_waiting_and_the_threads_torch_then_runs(tmp_path):
    code = ("import os, sys\n"
            "from sam3_lora.cli.main import main\n"
            "main(['data', 'create', sys.argv[1]])\n"   # a command that does not load torch itself
            "import torch\n"
            "print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True, text=True,
                         check=True, env=environ).stdout.split()
    assert out[-3] == "PASSIVE"
    assert 1 <= int(out[-2]) <= cpu.usable_cpus() and int(out[-1]) == int(out[-2])


def test_openmp_settings_are_read_for_other_thread_pools():
    assert cpu.openmp_settings({"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "passive"}) == (3, True)
    assert cpu.openmp_settings({"OMP_NUM_THREADS": "x"}) == (None, False)
    assert cpu.openmp_settings({}) == (None, False)
