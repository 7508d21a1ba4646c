"""The data-parallel scaling table (issue 16) from one gpu_scaling.sh run's results folder:
R/ours/WORKLOAD-nN.json (run-batch --summary-json) and R/vllm/*.log (peer_vllm_dp.py lines).

usage: python benchmarks/scaling_report.py R        (prints the markdown table; writes R/scaling.json)
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

import bench_setup  # noqa: E402,F401  (first: repo on sys.path)

from batchllm.bench.scaling import markdown, run_from_summary, runs_from_peer_lines, scaling_table  # noqa: E402


def main(results: str) -> None:
    runs = []
    for path in sorted(glob.glob(os.path.join(results, "ours", "*-n*.json"))):
        workload = re.sub(r"-n\d+\.json$", "", os.path.basename(path))
        runs.append(run_from_summary(json.load(open(path)), workload))
    lines = [line for path in sorted(glob.glob(os.path.join(results, "vllm", "*.log"))) for line in open(path)]
    runs += runs_from_peer_lines(lines)
    rows = scaling_table(runs)
    with open(os.path.join(results, "scaling.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(markdown(rows))


if __name__ == "__main__":
    main(sys.argv[1])
