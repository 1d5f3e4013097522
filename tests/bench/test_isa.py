"""bench.isa: a process it starts, and the processes that one starts, see the capped ISA."""
import os
import pathlib
import subprocess
import sys
import textwrap

from bench.isa import CAPS, SITE, environment

PROBE = textwrap.dedent("""
    import subprocess, sys, torch
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    from conf.hardware import resolve_dtype, speed_flags
    from learner.linear import choose
    print(torch.cpu._is_avx512_supported(), torch.cpu._is_avx512_bf16_supported(), torch.cpu._is_amx_tile_supported())
    print(torch.backends.cpu.get_cpu_capability(), str(pick_vec_isa()) or "none")
    print(resolve_dtype("auto", "rollout", gpu=False)[0], choose("auto")[0], " ".join(speed_flags()) or "-")
    print(subprocess.run([sys.executable, "-c", "import torch; print(torch.cpu._is_avx512_supported())"],
                         capture_output=True, text=True).stdout.strip())  # a child (TRL, a Ray worker) too
""")


def test_a_capped_run_sees_avx2_in_torch_compile_auto_and_its_children(tmp_path):
    (tmp_path / "isa_probe.py").write_text(PROBE)
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in CAPS["avx2"] and k != "VLMR1_ISA_CAP"}
    env["PYTHONPATH"] = f"{tmp_path}:{repo}"  # the caps and the site hook are bench.isa's to add
    out = subprocess.run([sys.executable, "-m", "bench.isa", "avx2", "isa_probe"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    probes, isa, auto, child = out.stdout.strip().splitlines()[-4:]
    assert probes == "False False False" and child == "False"
    assert isa.split()[0] == "AVX2" and isa.split()[1] in ("avx2", "none")  # none: no C++ compiler here
    dtype, linear, flags = auto.split()
    assert (dtype, linear) == ("float32", "torch") and "avx512" not in flags


def test_the_environment_adds_the_caps_and_the_site_hook_in_front():
    env = environment("avx2", {"PYTHONPATH": "/mine", "HOME": "/h"})
    assert {k: env[k] for k in CAPS["avx2"]} == CAPS["avx2"] and env["HOME"] == "/h"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(SITE), "/mine"]


def test_an_unknown_isa_is_refused_with_the_choices():
    out = subprocess.run([sys.executable, "-m", "bench.isa", "sse2", "bench.rollout"], capture_output=True, text=True)
    assert out.returncode != 0 and "unknown ISA 'sse2'; choose one of avx2" in out.stderr
