"""Reliability tooling: overload driver, soak, and the local server they run against."""
