"""`make bench`: the server measured beside what a user would otherwise run, on one machine, in one run.

`python -m bench --help` lists the options; `bench/report/` holds the committed report.
"""
