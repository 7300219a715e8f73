"""Every Triton kernel config the dispatchers can launch compiles for sm_80 and sm_90 without spills.

No GPU needed: `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` produces the
cubin and triton's bundled `cuobjdump --dump-resource-usage` reads REG / STACK / LOCAL from it
(docs/design.md §6). The compiler cannot run under TRITON_INTERPRET, which the other ops tests set, so
the compiles run in subprocesses with it removed (two shards in parallel; triton's cache makes
reruns fast).
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ARCHS = (80, 90)
SHARDS = 2

WORKER = r"""
import importlib, json, sys
from chunksft.ops._triton import compile_for
shard, shards = int(sys.argv[1]), int(sys.argv[2])
specs = []
for module in ("chunk_attention", "chunk_mask", "linear_cross_entropy"):
    specs += importlib.import_module("chunksft.ops." + module).aot_specs()
jobs = [(spec, arch) for spec in specs for arch in (80, 90)]
for spec, arch in jobs[shard::shards]:
    usage = compile_for(spec["fn"], spec["signature"], spec["constexprs"], arch,
                        num_warps=spec["num_warps"], num_stages=spec["num_stages"])
    print(json.dumps(dict(name=spec["name"], arch=arch, num_warps=spec["num_warps"], **usage)), flush=True)
"""


def compile_all():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(SHARDS)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(SHARDS)]
    rows = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        assert proc.returncode == 0, err[-3000:]
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rows


@pytest.mark.timeout(1800)
def test_every_dispatchable_config_compiles_without_spills():
    rows = compile_all()
    names = {row["name"] for row in rows}
    assert any(n.startswith("chunk_attention.bwd_dkdv") for n in names)
    assert any(n.startswith("chunk_mask.") for n in names) and any(n.startswith("linear_cross_entropy.") for n in names)
    assert {row["arch"] for row in rows} == set(ARCHS)
    print("\nkernel config                              arch  warps  REG  STACK  LOCAL")
    for row in sorted(rows, key=lambda r: (r["name"], r["arch"])):
        print(f"{row['name']:<42} sm{row['arch']}  {row['num_warps']:>5}  {row['REG']:>3}  {row['STACK']:>5}  "
              f"{row['LOCAL']:>5}")
    spills = [row for row in rows if row["STACK"] != 0 or row["LOCAL"] != 0 or row["REG"] < 0]
    assert not spills, f"register spills: {spills}"
