"""The least a batch job's pool can take on a running cluster: a new driver starts N bare actors,
each of which imports what every scoring actor must (`ray.data`, whose class Ray Data's actors are,
and the job's module) and nothing else. Prints the seconds from the driver's connection until the
last actor has, as JSON; batch_throughput.py runs it as a job of its own.

    python benchmarks/actor_start_floor.py ADDRESS N
"""

from __future__ import annotations

import json
import sys
import time

import ray


@ray.remote(num_cpus=1)
class Probe:
    def __init__(self):
        import ray.data  # noqa: F401

        import batch.job  # noqa: F401

        self.ready_at = time.time()

    def ready(self) -> float:
        return self.ready_at


def main() -> None:
    address, actors = sys.argv[1], int(sys.argv[2])
    ray.init(address=address, logging_level="ERROR")
    connected = time.time()
    probes = [Probe.remote() for _ in range(actors)]
    ready = ray.get([p.ready.remote() for p in probes])
    print(json.dumps({"actors": actors, "seconds": round(max(ready) - connected, 2)}))


if __name__ == "__main__":
    main()
