"""Medians over rounds, markdown tables, ratios and the issue-18 targets."""

from __future__ import annotations

import statistics
from typing import Any

from .roles import ENCRYPTED_PEERS, SYSTEMS

FLOOR = "raw-tcp"
SUBJECT = "peernet"
#: The systems under test: ids passed as PeerId, and as their pn1... text.
SUBJECTS = ("peernet", "peernet-text")
#: (workload, key, label, lower_is_better)
HEADLINE = [
    ("w1", "p50_us", "W1 p50 µs", True),
    ("w2", "calls_per_s", "W2 calls/s", False),
    ("w3", "msgs_per_s", "W3 msgs/s", False),
    ("w4", "mb_per_s", "W4 MB/s", False),
    ("w5", "median_ms", "W5 ms", True),
    ("w5cold", "median_ms", "W5-cold ms", True),
]
#: (metric label, workload, key, goal factor against zmq-curve, lower_is_better)
TARGETS = [
    ("W1 p50 ≤ 0.8× zmq-curve", "w1", "p50_us", 0.8, True),
    ("W2 ≥ 2.0× zmq-curve", "w2", "calls_per_s", 2.0, False),
    ("W3 ≥ 1.0× zmq-curve", "w3", "msgs_per_s", 1.0, False),
    ("W4 ≥ 1.0× zmq-curve", "w4", "mb_per_s", 1.0, False),
    ("W5 ≤ 0.9× zmq-curve", "w5", "median_ms", 0.9, True),
    ("W5-cold ≤ 2.0× zmq-curve", "w5cold", "median_ms", 2.0, True),
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


def _header(*cells: str) -> list[str]:
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def main_table(rounds: list[dict[str, Any]]) -> list[str]:
    lines = _header("system", "security", "W1 p50 µs", "W1 p99 µs", "W1 calls/s",
                    "W2 calls/s (shared)", "W3 recv msgs/s (recv / sent)", "W4 MB/s", "W5 ms",
                    "W5-cold ms")
    for s in _systems(rounds):
        lines.append(_main_row(rounds, s))
    return lines


def _main_row(rounds: list[dict[str, Any]], s: str) -> str:
    last = next(r[s] for r in reversed(rounds) if s in r)

    def m(wl: str, key: str) -> str:
        return fmt(median_of(rounds, s, wl, key), key)

    mode = last.get("w2", {}).get("mode")
    w3 = m("w3", "msgs_per_s")
    if median_of(rounds, s, "w3", "sent"):
        w3 += f" ({m('w3', 'received')} / {m('w3', 'sent')})"
    errors = sorted({wl for r in rounds if s in r for wl in r[s].get("errors", {})})
    w5 = m("w5", "median_ms") + (f" ⚠ failed: {', '.join(errors)}" if errors else "")
    return _row(f"**{s}**" if s in SUBJECTS else s, last.get("security", "?"),
                m("w1", "p50_us"), m("w1", "p99_us"), m("w1", "calls_per_s"),
                m("w2", "calls_per_s") + (f" ({mode})" if mode else ""), w3,
                m("w4", "mb_per_s"), w5, m("w5cold", "median_ms"))


def rounds_table(rounds: list[dict[str, Any]]) -> list[str]:
    """Every round's headline numbers, to show how far the rounds agree."""
    lines = _header("system", *(label for _, _, label, _ in HEADLINE))
    for s in _systems(rounds):
        cells = [" / ".join(fmt(r[s].get(wl, {}).get(key), key) for r in rounds if s in r)
                 for wl, key, _, _ in HEADLINE]
        lines.append(_row(s, *cells))
    return lines


def floor_ratios(rounds: list[dict[str, Any]]) -> list[str]:
    lines = _header(f"system ÷ {FLOOR}", *(label for _, _, label, _ in HEADLINE))
    for s in _systems(rounds):
        lines.append(_row(s, *(ratio(median_of(rounds, s, wl, key),
                                     median_of(rounds, FLOOR, wl, key))
                               for wl, key, _, _ in HEADLINE)))
    return lines


def best_peer(rounds: list[dict[str, Any]], wl: str, key: str,
              lower: bool) -> tuple[float | None, str | None]:
    found = [(v, s) for s in ENCRYPTED_PEERS
             if (v := median_of(rounds, s, wl, key)) is not None]
    if not found:
        return None, None
    return (min if lower else max)(found)


def subject_table(rounds: list[dict[str, Any]]) -> list[str]:
    lines = _header("workload", SUBJECT, FLOOR, f"{SUBJECT} ÷ {FLOOR}", "best encrypted peer",
                    f"{SUBJECT} ÷ best encrypted")
    for wl, key, label, lower in HEADLINE:
        mine = median_of(rounds, SUBJECT, wl, key)
        floor = median_of(rounds, FLOOR, wl, key)
        value, peer = best_peer(rounds, wl, key, lower)
        best = f"{peer}: {fmt(value, key)}" if peer else "—"
        lines.append(_row(label, fmt(mine, key), fmt(floor, key), ratio(mine, floor), best,
                          ratio(mine, value)))
    return lines


def targets(rounds: list[dict[str, Any]], scale: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with its verdict (True, False, or None: not measured), for ids passed
    as PeerId (``peernet``) and as text (``peernet-text``)."""
    out = []
    for subject in SUBJECTS:
        if not any(subject in r for r in rounds):
            continue
        form = "" if subject == SUBJECT else " (ids as text)"
        for label, wl, key, goal, lower in TARGETS:
            if subject != SUBJECT and wl == "w5cold":
                continue  # W5-cold passes text either way
            mine = median_of(rounds, subject, wl, key)
            ref = median_of(rounds, "zmq-curve", wl, key)
            r = mine / ref if mine is not None and ref else None
            out.append({"target": label + form, "value": fmt(mine, key), "ref": fmt(ref, key),
                        "ratio": r,
                        "pass": None if r is None else (r <= goal if lower else r >= goal)})
    ok = [s for s in scale if "rss_per_link_kib" in s]
    per_link = statistics.median(s["rss_per_link_kib"] for s in ok) if ok else None
    p50_ratio = statistics.median(s["w1_p50_ratio"] for s in ok) if ok else None
    peers = ok[0]["peers"] if ok else "N"
    out.append({"target": f"server RSS per idle link ≤ {RSS_PER_LINK_GOAL_KIB:g} KiB "
                          f"({peers} links)",
                "value": "—" if per_link is None else f"{per_link:.1f} KiB", "ref": "—",
                "ratio": None,
                "pass": None if per_link is None else per_link <= RSS_PER_LINK_GOAL_KIB})
    out.append({"target": f"W1 p50 at {peers} links ≤ {SCALE_P50_GOAL}× at 1 link",
                "value": "—" if p50_ratio is None else f"{p50_ratio:.2f}×", "ref": "—",
                "ratio": p50_ratio,
                "pass": None if p50_ratio is None else p50_ratio <= SCALE_P50_GOAL})
    return out


def targets_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = _header("target", SUBJECT, "zmq-curve", "ratio", "result")
    for t in rows:
        verdict = {True: "PASS", False: "**FAIL**", None: "n/a"}[t["pass"]]
        r = "—" if t["ratio"] is None else f"{t['ratio']:.2f}×"
        lines.append(_row(t["target"], t["value"], t["ref"], r, verdict))
    return lines


def scale_table(scale: list[dict[str, Any]]) -> list[str]:
    lines = _header("round", "links", "server RSS MiB: 0 links → 1 → N", "RSS per link KiB",
                    "server threads 0 → N", "W1 p50 µs, 1 link", "W1 p50 µs, N links", "ratio",
                    "linking all s")
    for k, s in enumerate(scale, 1):
        if "error" in s:
            lines.append(_row(str(k), str(s["peers"]), f"failed: {s['error']}", *[""] * 6))
            continue
        rss = " → ".join(f"{s[key] / 1024:.1f}" for key in ("rss0_kib", "rss1_kib", "rss_n_kib"))
        lines.append(_row(str(k), str(s["peers"]), rss, f"{s['rss_per_link_kib']:.1f}",
                          f"{s['threads0']} → {s['threads_n']}", f"{s['w1_1']['p50_us']:.1f}",
                          f"{s['w1_n']['p50_us']:.1f}", f"{s['w1_p50_ratio']:.2f}×",
                          f"{s['link_all_s']:.1f}"))
    return lines


def load_table(rounds: list[dict[str, Any]], scale: list[dict[str, Any]]) -> list[str]:
    """Other processes' CPU while each child ran: noise that the numbers above carry."""

    def cell(res: dict[str, Any] | None) -> str:
        cpu = (res or {}).get("cpu")
        if not cpu:
            return "—"
        mine = cpu.get("foreign_on_our_cpus")
        return f"{cpu['foreign_cores']:.2f} / {'—' if mine is None else f'{mine:.2f}'}"

    lines = _header("system", *(f"round {k}" for k in range(1, len(rounds) + 1)))
    for s in _systems(rounds):
        lines.append(_row(s, *(cell(r.get(s)) for r in rounds)))
    if scale:
        lines.append(_row("scale", *(cell(sc) for sc in scale)))
    return lines


def markdown(doc: dict[str, Any]) -> str:
    meta, rounds, scale = doc["meta"], doc["rounds"], doc["scale"]
    placed = ("unpinned" if meta["cpu_client"] is None else
              f"client CPU {meta['cpu_client']}, server CPU {meta['cpu_server']}")
    malloc = "tuned" if meta.get("tuned_malloc") else "default"
    out = [f"# peernet benchmark — {meta['started']}", "",
           (f"`{meta['command']}` · pin={meta['pin']} ({placed}) · {len(rounds)} round(s), "
            f"medians · {'quick' if meta['quick'] else 'full'} sizes · {malloc} malloc · "
            "loopback 127.0.0.1"), "",
           f"Machine: {meta['machine']['summary']}", "",
           f"Packages: {meta['machine']['packages']}", ""]
    if meta.get("profile"):
        out += [("**Profiled run: the server ran under cProfile; these numbers are not "
                 "comparable with an ordinary run.**"), ""]
    out += ["## Results (median of rounds)", "", *main_table(rounds), ""]
    if len(rounds) > 1:
        out += ["Per round (round 1 / round 2 / ...):", "", *rounds_table(rounds), ""]
    out += [f"## Ratios against {FLOOR} (the plaintext floor)", "",
            "Latency (W1 p50, W5): lower is better; throughput (W2-W4): higher is better.", "",
            *floor_ratios(rounds), "",
            (f"## {SUBJECT} against the floor and the best encrypted peer "
             f"({', '.join(ENCRYPTED_PEERS)})"), "", *subject_table(rounds), ""]
    if scale:
        out += ["## Scale: N client nodes linked to one server node", "", *scale_table(scale), ""]
    if doc.get("targets"):
        note = "" if meta["pin"] == "same" else " (the targets are defined for pin=same)"
        out += [f"## Targets{note}", "", *targets_table(doc["targets"]), ""]
    out += ["## Other load on the machine", "",
            ("CPU used by processes outside this benchmark while each system ran (/proc/stat "
             "minus our own processes), in cores: whole machine / on the CPUs we pinned to."),
            "", *load_table(rounds, scale), ""]
    return "\n".join(out)
