"""The machine a benchmark's figures come from: the CPU's model name, its cores and flags that matter to PyTorch
(AMX, AVX512-BF16), and the GPU if there is one."""

import os
import subprocess


def describe() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        lines = []
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    flags = set(fields.get("Flags", "").split())
    wanted = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    text = f"{fields.get('Model name', 'unknown CPU')}, {os.cpu_count()} cores" + \
        (f" ({', '.join(wanted)})" if wanted else "")
    import torch
    return text + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
