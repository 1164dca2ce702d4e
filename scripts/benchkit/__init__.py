"""The peer benchmark behind ``scripts/bench`` (issue 8).

Layout: ``common`` (handlers, payloads, the client interface), ``procs`` (pinning,
child processes, READY), ``workloads`` (W1-W5, the same code for every system), one
``sys_*`` module per system, ``scale`` (500 peernet links), ``profiling`` (cProfile
over every thread), ``report`` (tables, targets) and ``runner`` (rounds, JSON).
"""
