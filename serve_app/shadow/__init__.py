"""Shadow deployment: production requests mirrored to versions that never answer the client
(mirror.py), and the offline comparison of what they answered (report.py)."""
