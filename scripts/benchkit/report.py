"""Medians over rounds, markdown tables, ratios and the issue-8 targets."""

from __future__ import annotations

import statistics
from typing import Any

from .roles import ENCRYPTED_PEERS, SYSTEMS

FLOOR = "raw-tcp"
SUBJECT = "peernet"
#: (workload, key, label, lower_is_better)
HEADLINE = [
    ("w1", "p50_us", "W1 p50 µs", True),
    ("w2", "calls_per_s", "W2 calls/s", False),
    ("w3", "msgs_per_s", "W3 msgs/s", False),
    ("w4", "mb_per_s", "W4 MB/s", False),
    ("w5", "median_ms", "W5 ms", True),
]
#: (metric label, workload, key, goal factor against zmq-curve, lower_is_better)
TARGETS = [
    ("W1 p50 ≤ 0.8× zmq-curve", "w1", "p50_us", 0.8, True),
    ("W2 ≥ 2.5× zmq-curve", "w2", "calls_per_s", 2.5, False),
    ("W3 ≥ 1.0× zmq-curve", "w3", "msgs_per_s", 1.0, False),
    ("W4 ≥ 1.0× zmq-curve", "w4", "mb_per_s", 1.0, False),
    ("W5 ≤ 1.0× zmq-curve", "w5", "median_ms", 1.0, True),
]
RSS_PER_LINK_GOAL_KIB = 150.0
SCALE_P50_GOAL = 1.5


def median_of(rounds: list[dict[str, Any]], system: str, wl: str, key: str) -> float | None:
    values = [r[system][wl][key] for r in rounds
              if system in r and wl in r[system] and key in r[system][wl]]
    return statistics.median(values) if values else None


def fmt(value: float | None, key: str) -> str:
    if value is None:
        return "—"
    if key.endswith("_us"):
        return f"{value:,.1f}"
    if key.endswith("_ms"):
        return f"{value:,.2f}"
    if key == "mb_per_s":
        return f"{value:,.0f}" if value >= 10 else f"{value:,.1f}"
    return f"{value:,.0f}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}×"


def _systems(rounds: list[dict[str, Any]]) -> list[str]:
    seen = {s for r in rounds for s in r}
    return [s for s in SYSTEMS if s in seen]


def main_table(rounds: list[dict[str, Any]]) -> list[str]:
    lines = ["| system | security | W1 p50 µs | W1 p99 µs | W1 calls/s | W2 calls/s (shared) "
             "| W3 recv msgs/s (recv / sent) | W4 MB/s | W5 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in _systems(rounds):
        last = next(r[s] for r in reversed(rounds) if s in r)
        m = lambda wl, key: median_of(rounds, s, wl, key)  # noqa: E731
        w2 = fmt(m("w2", "calls_per_s"), "calls_per_s")
        mode = last.get("w2", {}).get("mode")
        w3 = fmt(m("w3", "msgs_per_s"), "msgs_per_s")
        if m("w3", "sent"):
            w3 += f" ({fmt(m('w3', 'received'), 'n')} / {fmt(m('w3', 'sent'), 'n')})"
        errors = sorted({wl for r in rounds if s in r for wl in r[s].get("errors", {})})
        name = f"**{s}**" if s == SUBJECT else s
        lines.append(
            f"| {name} | {last.get('security', '?')} | {fmt(m('w1', 'p50_us'), 'p50_us')} "
            f"| {fmt(m('w1', 'p99_us'), 'p99_us')} | {fmt(m('w1', 'calls_per_s'), 'n')} "
            f"| {w2}{f' ({mode})' if mode else ''} | {w3} | {fmt(m('w4', 'mb_per_s'), 'mb_per_s')} "
            f"| {fmt(m('w5', 'median_ms'), 'median_ms')}"
            f"{' ⚠ failed: ' + ', '.join(errors) if errors else ''} |")
    return lines


def rounds_table(rounds: list[dict[str, Any]]) -> list[str]:
    """Every round's headline numbers, to show how far the rounds agree."""
    head = " | ".join(label for _, _, label, _ in HEADLINE)
    lines = [f"| system | {head} |", "|---|" + "---|" * len(HEADLINE)]
    for s in _systems(rounds):
        cells = []
        for wl, key, _, _ in HEADLINE:
            vals = [fmt(r[s].get(wl, {}).get(key), key) for r in rounds if s in r]
            cells.append(" / ".join(vals))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines


def floor_ratios(rounds: list[dict[str, Any]]) -> list[str]:
    head = " | ".join(label.split(" ")[0] for _, _, label, _ in HEADLINE)
    lines = [f"| system ÷ {FLOOR} | {head} |", "|---|" + "---|" * len(HEADLINE)]
    for s in _systems(rounds):
        cells = [ratio(median_of(rounds, s, wl, key), median_of(rounds, FLOOR, wl, key))
                 for wl, key, _, _ in HEADLINE]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines


def best_peer(rounds: list[dict[str, Any]], wl: str, key: str, lower: bool):
    found = [(v, s) for s in ENCRYPTED_PEERS
             if (v := median_of(rounds, s, wl, key)) is not None]
    if not found:
        return None, None
    return (min if lower else max)(found)


def subject_table(rounds: list[dict[str, Any]]) -> list[str]:
    lines = [f"| workload | {SUBJECT} | {FLOOR} | {SUBJECT} ÷ {FLOOR} "
             f"| best encrypted peer | {SUBJECT} ÷ best encrypted |",
             "|---|---|---|---|---|---|"]
    for wl, key, label, lower in HEADLINE:
        mine = median_of(rounds, SUBJECT, wl, key)
        floor = median_of(rounds, FLOOR, wl, key)
        value, peer = best_peer(rounds, wl, key, lower)
        best = f"{peer}: {fmt(value, key)}" if peer else "—"
        lines.append(f"| {label} | {fmt(mine, key)} | {fmt(floor, key)} | {ratio(mine, floor)} "
                     f"| {best} | {ratio(mine, value)} |")
    return lines


def targets(rounds: list[dict[str, Any]], scale: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for label, wl, key, goal, lower in TARGETS:
        mine = median_of(rounds, SUBJECT, wl, key)
        ref = median_of(rounds, "zmq-curve", wl, key)
        if mine is None or not ref:
            out.append({"target": label, "value": None, "ref": ref, "ratio": None, "pass": None})
            continue
        r = mine / ref
        out.append({"target": label, "value": fmt(mine, key), "ref": fmt(ref, key), "ratio": r,
                    "pass": r <= goal if lower else r >= goal})
    ok = [s for s in scale if "rss_per_link_kib" in s]
    per_link = statistics.median(s["rss_per_link_kib"] for s in ok) if ok else None
    p50_ratio = statistics.median(s["w1_p50_ratio"] for s in ok) if ok else None
    peers = ok[0]["peers"] if ok else "N"
    out.append({"target": f"server RSS per idle link ≤ {RSS_PER_LINK_GOAL_KIB:g} KiB "
                          f"({peers} links)",
                "value": None if per_link is None else f"{per_link:.1f} KiB", "ref": "—",
                "ratio": None, "pass": None if per_link is None
                else per_link <= RSS_PER_LINK_GOAL_KIB})
    out.append({"target": f"W1 p50 at {peers} links ≤ {SCALE_P50_GOAL}× at 1 link",
                "value": None if p50_ratio is None else f"{p50_ratio:.2f}×", "ref": "—",
                "ratio": p50_ratio, "pass": None if p50_ratio is None
                else p50_ratio <= SCALE_P50_GOAL})
    return out


def targets_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | peernet | zmq-curve | ratio | result |", "|---|---|---|---|---|"]
    for t in rows:
        verdict = {True: "PASS", False: "**FAIL**", None: "n/a"}[t["pass"]]
        r = "—" if t["ratio"] is None else f"{t['ratio']:.2f}×"
        lines.append(f"| {t['target']} | {t['value'] or '—'} | {t['ref'] or '—'} | {r} "
                     f"| {verdict} |")
    return lines


def scale_table(scale: list[dict[str, Any]]) -> list[str]:
    lines = ["| round | links | server RSS 0 links → 1 → N (MiB) | RSS per link KiB "
             "| server threads 0 → N | W1 p50 µs 1 link | W1 p50 µs N links | ratio "
             "| linking all s |", "|---|---|---|---|---|---|---|---|---|"]
    for k, s in enumerate(scale, 1):
        if "error" in s:
            lines.append(f"| {k} | {s['peers']} | failed: {s['error']} |||||||")
            continue
        lines.append(
            f"| {k} | {s['peers']} | {s['rss0_kib'] / 1024:.1f} → {s['rss1_kib'] / 1024:.1f} → "
            f"{s['rss_n_kib'] / 1024:.1f} | {s['rss_per_link_kib']:.1f} "
            f"| {s['threads0']} → {s['threads_n']} | {s['w1_1']['p50_us']:.1f} "
            f"| {s['w1_n']['p50_us']:.1f} | {s['w1_p50_ratio']:.2f}× | {s['link_all_s']:.1f} |")
    return lines


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def markdown(doc: dict[str, Any]) -> str:
    meta, rounds, scale = doc["meta"], doc["rounds"], doc["scale"]
    placed = ("unpinned" if meta["cpu_client"] is None else
              f"client CPU {meta['cpu_client']}, server CPU {meta['cpu_server']}")
    out = [f"# peernet benchmark — {meta['started']}", "",
           f"`{meta['command']}` · pin={meta['pin']} ({placed}) · {len(rounds)} round(s), "
           f"medians · {'quick' if meta['quick'] else 'full'} sizes · "
           f"{'tuned' if meta.get('tuned_malloc') else 'default'} malloc · loopback 127.0.0.1",
           "",
           f"Machine: {meta['machine']['summary']}", "",
           f"Packages: {meta['machine']['packages']}", ""]
    if meta.get("profile"):
        out += ["**Profiled run: the server ran under cProfile; these numbers are not "
                "comparable with an ordinary run.**", ""]
    out += ["## Results (median of rounds)", "", *main_table(rounds), ""]
    if len(rounds) > 1:
        out += ["Per round (round 1 / round 2 / ...):", "", *rounds_table(rounds), ""]
    out += [f"## Ratios against {FLOOR} (the plaintext floor)", "",
            "Latency (W1 p50, W5): lower is better; throughput (W2-W4): higher is better.", "",
            *floor_ratios(rounds), "",
            f"## {SUBJECT} against the floor and the best encrypted peer "
            f"({', '.join(ENCRYPTED_PEERS)})", "", *subject_table(rounds), ""]
    if scale:
        out += ["## Scale: N client nodes linked to one server node", "", *scale_table(scale), ""]
    if doc.get("targets"):
        note = "" if meta["pin"] == "same" else " (the targets are defined for pin=same)"
        out += [f"## Targets (issue 8){note}", "", *targets_table(doc["targets"]), ""]
    out += ["## Other load on the machine", "",
            "CPU used by processes outside this benchmark while each system ran (from "
            "/proc/stat minus our own processes), in cores: whole machine / on the CPUs we "
            "pinned to.", "",
            "| system | " + " | ".join(f"round {k}" for k in range(1, len(rounds) + 1)) + " |",
            "|---|" + "---|" * len(rounds)]
    for s in [*_systems(rounds)]:
        cells = []
        for r in rounds:
            cpu = r.get(s, {}).get("cpu")
            cells.append("—" if not cpu else
                         f"{cpu['foreign_cores']:.2f} / {_num(cpu.get('foreign_on_our_cpus'))}")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    for k, sc in enumerate(scale, 1):
        cpu = sc.get("cpu")
        if cpu:
            out.append(f"| scale (round {k}) | {cpu['foreign_cores']:.2f} / "
                       f"{_num(cpu.get('foreign_on_our_cpus'))} |")
    out.append("")
    return "\n".join(out)
