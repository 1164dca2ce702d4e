"""The peer benchmark behind ``scripts/bench`` (issue 8); see guides/performance.md.

- ``runner``: rounds of every system, the scale test, the JSON and markdown output;
- ``roles``: the client and server processes of one system;
- ``procs``: CPU pinning, READY lines, bounded child lifetimes, /proc status;
- ``workloads``: W1-W5, one implementation for every system;
- ``common``: the server handlers, payloads, sizes and the client interface;
- ``sys_*``: one module per system (``framed`` and ``certs`` serve raw-tcp and tls-tcp);
- ``scale``: N peernet nodes linked to one server; ``profiling``: cProfile on every
  thread; ``report``: medians, ratios, targets, tables.
"""
