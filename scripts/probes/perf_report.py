"""Markdown tables of a perf_probe.py JSON file (as kept in docs/performance.md).

    python3 -m scripts.probes.perf_report docs/data/h200-probe-2026-11-26.json
"""

from __future__ import annotations

import json
import sys

CASES = [("decode_update_us", "decode update, first layer"), ("prefill_update_us", "prefill update"),
         ("later_layer_update_us", "decode update, later layer"), ("decode_pack_us", "decode pack"),
         ("decode_step_us", "decode step (update + pack)")]


def main(path: str) -> None:
    report = json.load(open(path))
    floors = report["floors"]
    print(f"{report['device']}, torch {report['torch']}, triton {report.get('triton', '-')}; "
          f"bare synchronise {floors['bare_sync_us']:.1f} us, one tiny kernel + synchronise "
          f"{floors['one_launch_us']:.1f} us, eight tiny kernels + synchronise {floors['eight_launches_us']:.1f} us"
          + "".join(f"; pinned copy of {key[5:-5]} KB to the device + synchronise {value:.1f} us"
                    for key, value in floors.items() if key.startswith("copy_"))
          + "".join(f"; host write of {key[6:-5]} KB + synchronise {value:.1f} us" for key, value in floors.items()
                    if key.startswith("write_") and not key.startswith("write_copy_"))
          + "".join(f"; host write of {key[11:-5]} KB then its copy + synchronise {value:.1f} us"
                    for key, value in floors.items() if key.startswith("write_copy_"))
          + "\n")
    points = {(p["batch_size"], p["seq_len"], p["variant"]): p for p in report["points"]}
    variants = list(dict.fromkeys(p["variant"] for p in report["points"]))
    grid = sorted({(b, s) for b, s, _ in points})
    for key, title in CASES:
        print(f"**{title}** (median us; speedup = cpu / gpu-triton-graphs)\n")
        print("| B | L | " + " | ".join(variants) + " | speedup |")
        print("|---:|---:|" + "---:|" * (len(variants) + 1))
        for b, s in grid:
            row = [points[(b, s, v)][key] for v in variants]
            speedup = points[(b, s, "cpu")][key] / points[(b, s, "gpu-triton-graphs")][key]
            print(f"| {b} | {s} | " + " | ".join(f"{x:.1f}" for x in row) + f" | {speedup:.2f}x |")
        print()


if __name__ == "__main__":
    main(sys.argv[1])
