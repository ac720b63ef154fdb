"""The one measurement toolkit of bench/, tools/, load_tests/ and the client benchmark.

- `loadgen`: the closed-loop load generator (asyncio, optionally spread over processes);
- `images`: the image-folder loader and the workloads built from it;
- `triton_stats`: Triton's statistics API, read and differenced over a window;
- `machine`: what the figures were measured on (CPU accounting comes from clip_triton_serve.procfs);
- `timing`: latency percentiles and time-bounded repetition;
- `locust_output`: the figures locust writes (JSON stats, failures and history CSVs).

Modules import only what their job needs, so the locustfile can use `images` without torch or matplotlib.
"""
