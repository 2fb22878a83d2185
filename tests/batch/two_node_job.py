"""Runs the batch job on a local two-node Ray cluster (a head and a second node beside it, each its
own raylet), as `ray job submit` would on a real one; prints the job's summary as the last line.

    python tests/batch/two_node_job.py <serve config> <input> <output>
"""

from __future__ import annotations

import json
import subprocess
import sys

from ray.cluster_utils import Cluster


def main(serve_config: str, inputs: str, output: str) -> int:
    # Four single-CPU actors cannot fit on the three-CPU head: the pool must reach the second node.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        command = [
            sys.executable,
            "-m",
            "batch",
            "--config",
            serve_config,
            "--input",
            inputs,
            "--output",
            output,
            "--num-actors",
            "4",
            "--num-cpus-per-actor",
            "1",
            "--address",
            cluster.address,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
            return done.returncode
        summary = json.loads(done.stdout[done.stdout.index("\n{") + 1 :])
        print(json.dumps(summary))
        return 0
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
