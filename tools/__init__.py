"""Reliability tooling: the overload and soak reports (traffic from locust), refusal timing, the crafted payloads
and the local server they run against."""
