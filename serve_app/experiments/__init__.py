"""Champion/challenger: where each request goes and what the experiment concludes. Plain Python and
numpy, no I/O on the request path and no Ray.

- split.py: `TrafficPolicy`, the weighted sticky split and shadow sampling (every request, every router).
- traffic.py: `TrafficController`, a router's per-request bookkeeping: route, record, events to ship.
- arms.py: `ArmStats`, a version's counts, outcome sums and recent latencies.
- sequential.py: `SequentialTest`, the mSPRT that stays valid under continuous monitoring.
- experiment.py: `Experiment`, one model's state: traffic, statistics, decisions, history.
- store.py: `ExperimentStore`, every model's experiment, persisted under the storage URI.
"""
