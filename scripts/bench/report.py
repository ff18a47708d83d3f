"""Markdown tables, results.json and a hand-written SVG chart of the ratios to overlayfs."""

import json
import math
import os
import statistics

FUSE = ["unionmount", "fuse-overlayfs", "fuse-overlayfs-2", "unionfs-fuse", "mergerfs",
        "unionmount-rootless", "fuse-overlayfs-rootless", "fuse-overlayfs-2-rootless"]
COLORS = {"plain": "#9e9e9e", "unionmount": "#d62728", "fuse-overlayfs": "#1f77b4",
          "fuse-overlayfs-2": "#17becf", "unionfs-fuse": "#2ca02c", "mergerfs": "#ff7f0e",
          "overlay": "#000000", "unionmount-rootless": "#f4a3a3",
          "fuse-overlayfs-rootless": "#9ec5e8", "fuse-overlayfs-2-rootless": "#a6e3ea"}
LABELS = {}  # target -> column header ("fuse-overlayfs 1.10"), set by write_all from info


def lab(t):
    return LABELS.get(t, t)


def aggregate(wl, tnames, results):
    """[(workload, mode, {target: cell})], cell = dict(sec|None, status, n_ok, n, cpu, hwm)."""
    by = {}
    for r in results:
        by.setdefault((r["wid"], r["mode"], r["target"]), []).append(r)
    rows = []
    for w in wl:
        for ph in w.phases:
            cells = {}
            for t in tnames:
                rs = by.get((w.wid, ph.mode, t), [])
                ok = [r for r in rs if r["status"] == "ok"]
                c = dict(n=len(rs), n_ok=len(ok), sec=None, cpu=None, hwm_mib=None,
                         status="-" if not rs else "ok")
                if ok:
                    c["sec"] = statistics.median(r["sec"] for r in ok)
                    cpus = [r["cpu"] for r in ok if r.get("cpu") is not None]
                    hwms = [r["hwm_kb"] for r in ok if r.get("hwm_kb")]
                    c["cpu"] = statistics.median(cpus) if cpus else None
                    c["hwm_mib"] = statistics.median(hwms) / 1024 if hwms else None
                elif rs:
                    c["status"] = rs[0]["status"]
                    c["err"] = next((r.get("err") for r in rs if r.get("err")), None)
                cells[t] = c
            rows.append((w, ph.mode, cells))
    return rows


def fmt_sec(v):
    if v is None:
        return "-"
    if v < 0.01:
        return f"{v:.4f}"
    if v < 10:
        return f"{v:.3f}"
    return f"{v:.1f}"


def cell_sec(c):
    if c["sec"] is None:
        return c["status"]
    s = fmt_sec(c["sec"])
    return s + ("†" if c["n_ok"] < c["n"] else "")


def ratio(c, base):
    if c["sec"] is None or base["sec"] is None or base["sec"] <= 0:
        return None
    return c["sec"] / base["sec"]


def label(w):
    return f"{w.wid}. {w.title}"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if i >= 2 else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def fmt_ms(c):
    return f"{c['sec'] * 1000:.1f} ms" + ("†" if c["n_ok"] < c["n"] else "")


def seconds_table(rows, tnames):
    return table(["workload", "mode"] + [lab(t) for t in tnames],
                 [[label(w), mode] + [cell_sec(cells[t]) for t in tnames]
                  for w, mode, cells in rows])


def ratio_table(rows, tnames):
    others = [t for t in tnames if t != "overlay"]
    has_um = "unionmount" in tnames
    header = ["workload", "mode"] + [lab(t) for t in others] + \
        (["goal", "unionmount"] if has_um else [])
    body = []
    for w, mode, cells in rows:
        base = cells.get("overlay")
        line = [label(w), mode]
        if w.absolute:  # no overlayfs equivalent: milliseconds, goal in milliseconds
            line += [fmt_ms(cells[t]) if cells[t]["sec"] is not None else cells[t]["status"]
                     for t in others]
            if has_um:
                g = w.goal_ms(mode)
                um = cells["unionmount"]
                line.append(f"<{g:g} ms" if g else "-")
                if um["sec"] is None:
                    line.append(f"**{um['status']}**" if um["status"] in ("fail", "timeout")
                                else um["status"])
                elif g is None:
                    line.append("-")
                else:
                    line.append("ok" if um["sec"] * 1000 < g else
                                f"**{um['sec'] * 1000 / g:.1f}x over**")
            body.append(line)
            continue
        for t in others:
            rr = ratio(cells[t], base) if base else None
            line.append(f"{rr:.2f}" if rr is not None else
                        (cells[t]["status"] if cells[t]["sec"] is None else "-"))
        if has_um:
            g = w.goal(mode)
            rr = ratio(cells["unionmount"], base) if base else None
            line.append(f"≤{g:g}" if g else "-")
            um = cells["unionmount"]
            if um["sec"] is None and um["status"] in ("fail", "timeout"):
                line.append(f"**{um['status']}**")
            elif rr is None or g is None:
                line.append("-")
            else:
                line.append("ok" if rr <= g else f"**{rr / g:.1f}x over**")
        body.append(line)
    return table(header, body)


def daemon_table(rows, tnames):
    fuse = [t for t in tnames if t in FUSE]
    if not fuse:
        return ""
    body = []
    for w, mode, cells in rows:
        if w.stack == "podman":  # the daemons are podman's children, not ours: nothing read
            continue
        line = [label(w), mode]
        for t in fuse:
            c = cells[t]
            if c["sec"] is None:
                line.append(c["status"])
            else:
                cpu = f"{c['cpu']:.2f}" if c["cpu"] is not None else "?"
                hwm = f"{c['hwm_mib']:.0f}" if c["hwm_mib"] is not None else "?"
                line.append(f"{cpu} s / {hwm} MiB")
        body.append(line)
    if not body:
        return ""
    return table(["workload", "mode"] + [lab(t) for t in fuse], body)


def memory_table(memory):
    if not memory:
        return ""
    body = []
    for r in memory:
        if r.get("status") != "ok":
            body.append([lab(r["target"]), r.get("status", "?")] + ["-"] * 7)
            continue
        mib = lambda k: f"{r[k] / 1024:.1f}" if r.get(k) is not None else "?"
        shrink = "yes" if r["rss_drop_kb"] < 0.8 * r["rss_find_kb"] else "no"
        body.append([lab(r["target"]), f"{r['entries']}", fmt_sec(r["find_sec"]), mib("rss_mount_kb"),
                     mib("rss_find_kb"), mib("rss_drop_kb") + f" ({shrink})",
                     mib("rss_find2_kb"), mib("hwm_kb"),
                     f"{r.get('fds_find')} → {r.get('fds_drop')}"])
    return table(["daemon", "entries", "find s (cold)", "RSS at mount MiB",
                  "RSS after find MiB", "after drop_caches 2 MiB (shrank?)",
                  "after 2nd find MiB", "peak MiB", "open fds: after find → after drop"], body)


def svg_chart(rows, tnames):
    """Horizontal grouped bars, log scale, ratio to overlayfs (1 = the vertical line)."""
    series = [t for t in tnames if t != "overlay"]
    data = []
    for w, mode, cells in rows:
        if w.absolute:
            continue
        base = cells.get("overlay")
        vals = {t: (ratio(cells[t], base) if base else None) for t in series}
        bad = {t: cells[t]["status"] for t in series
               if cells[t]["sec"] is None and cells[t]["status"] in ("fail", "timeout")}
        data.append((f"{w.wid} {mode}", w.goal(mode), vals, bad))
    allv = [v for _, _, vs, _ in data for v in vs.values() if v]
    if not allv or "overlay" not in tnames:
        return None
    lo = 10 ** math.floor(math.log10(max(min(allv), 0.1)))  # smaller ratios are clipped
    hi = 10 ** math.ceil(math.log10(max(max(allv), 2)))
    left, right, top, bar = 90, 30, 50, 6
    width = 820
    # the legend, wrapped onto more lines when the targets do not fit on one
    legend, lx, ly = [], left, 26
    for t in series + ["goal"]:
        text = lab(t) if t != "goal" else "unionmount goal"
        w_item = 24 + 7 * len(text)
        if lx + w_item > width - right and lx > left:
            lx, ly = left, ly + 16
        legend.append((t, text, lx, ly))
        lx += w_item
    top += ly - 26
    group = bar * len(series) + 8
    height = top + group * len(data) + 40
    plot_w = width - left - right
    span = math.log10(hi) - math.log10(lo)
    x = lambda v: left + plot_w * (math.log10(v) - math.log10(lo)) / span
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'font-family="sans-serif" font-size="11">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{left}" y="16" font-size="13" font-weight="bold">time relative to kernel '
         f'overlayfs (log scale; left of the black line is faster)</text>']
    for t, text, lx, ly in legend:
        if t == "goal":
            o.append(f'<line x1="{lx}" y1="{ly + 5}" x2="{lx + 12}" y2="{ly + 5}" '
                     f'stroke="#d62728" stroke-width="2" stroke-dasharray="3,2"/>'
                     f'<text x="{lx + 16}" y="{ly + 9}">{text}</text>')
        else:
            o.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" '
                     f'fill="{COLORS.get(t, "#555")}"/><text x="{lx + 14}" y="{ly + 9}">'
                     f'{text}</text>')
    dec = lo
    while dec <= hi * 1.001:
        for m in (1, 2, 5):
            v = dec * m
            if lo <= v <= hi * 1.001:
                xv = x(v)
                o.append(f'<line x1="{xv:.1f}" y1="{top - 4}" x2="{xv:.1f}" '
                         f'y2="{height - 36}" stroke="{"#000" if v == 1 else "#ddd"}" '
                         f'stroke-width="{1.5 if v == 1 else 1}"/>'
                         f'<text x="{xv:.1f}" y="{height - 22}" text-anchor="middle">{v:g}</text>')
        dec *= 10
    for i, (name, goal, vals, bad) in enumerate(data):
        y0 = top + i * group
        o.append(f'<text x="{left - 6}" y="{y0 + group / 2 + 3:.1f}" text-anchor="end">'
                 f'{name}</text>')
        for j, t in enumerate(series):
            v = vals[t]
            y = y0 + j * bar
            if v:  # bars grow from 1 (= overlayfs): left is faster, right is slower
                xa, xb = sorted((x(1), x(max(v, lo))))
                o.append(f'<rect x="{xa:.1f}" y="{y}" width="{max(xb - xa, 1):.1f}" '
                         f'height="{bar - 1}" fill="{COLORS.get(t, "#555")}">'
                         f'<title>{lab(t)}: {v:.2f}x</title></rect>')
            elif t in bad:
                o.append(f'<text x="{x(1) + 3:.1f}" y="{y + bar}" font-size="8" '
                         f'fill="{COLORS.get(t, "#555")}">{lab(t)}: {bad[t]}</text>')
        if goal and "unionmount" in series:
            xg = x(goal)
            o.append(f'<line x1="{xg:.1f}" y1="{y0}" x2="{xg:.1f}" y2="{y0 + group - 8}" '
                     f'stroke="#d62728" stroke-width="2" stroke-dasharray="3,2"/>')
    o.append("</svg>")
    return "\n".join(o)


def markdown(info, wl, tnames, rows, memory):
    fix = info["fixture"]["params"]
    parts = [
        "## Results",
        "",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}; elapsed {info['elapsed_sec']:.0f} s"
        + (f" (INTERRUPTED: {info['interrupted']})" if info.get("interrupted") else ""),
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, kernel "
        f"{info['kernel']}; scratch on {info['scratch_fs']}; `ulimit -n` {info['nofile']}"
        + (f", FUSE daemons run with RLIMIT_NOFILE {info['daemon_nofile']}"
           if info.get("daemon_nofile") else ""),
        f"- load average at start {info.get('loadavg_start')}, at end {info.get('loadavg_end')}",
        f"- unionmount {info['unionmount_rev']}; peers: "
        + ", ".join(f"{k} ({v})" for k, v in info["versions"].items() if v and k != "plain"),
        f"- overlay module parameters: "
        + ", ".join(f"{k}={v}" for k, v in info["overlay_params"].items()),
        f"- median of {info['runs']} run(s), each on a fresh mount with an empty upper (row "
        "15: no upper, the lowers read-only, as podman mounts a parent layer to diff it); "
        "cold = `sync; echo 3 > /proc/sys/vm/drop_caches` first, warm = a second pass on the "
        "same mount, fresh = the first pass on a fresh mount whose branches were read just "
        "before mounting (in the page cache). † = some runs failed, the median is of the rest.",
    ]
    if info.get("rootless_user"):
        parts.append(f"- `*-rootless` columns: the daemon and the workload run as the "
                     f"unprivileged user `{info['rootless_user']}` (fusermount3, nosuid,nodev, "
                     "no passthrough) on branches it owns; the ratio is still to kernel "
                     "overlayfs mounted by root.")
    if info.get("rootfs"):
        r = info["rootfs"]
        parts.append(f"- Debian rootfs (workloads 14-16, 19): "
                     + (f"SYNTHETIC tree of the same shape, {r['entries']} entries "
                        f"({r.get('error')}); workload 16 cannot run" if r.get("synthetic") else
                        f"debootstrap --variant=minbase bookworm, {r['entries']} entries; "
                        f"workload 16 installs {' '.join(r.get('apt_packages') or [])} and "
                        "their dependencies from a layer of .debs above it"
                        + (f" (NOT AVAILABLE: {r['debs_error']})" if r.get("debs_error")
                           else "")) + ".")
        if r.get("rootfs_tar"):
            parts.append("- Workload 19: `podman build --no-cache` (scripts/podman-"
                         "debian.sh) FROM that rootfs `podman import`ed, with the .debs COPYed "
                         "in; each target a fresh storage root of its own, podman's overlay "
                         "driver with the target as `mount_program` (`overlay`: none, the "
                         "kernel), rootful; `*-rootless`: rootless podman as the unprivileged "
                         "user, the ratio to the rootful kernel driver; only the build is "
                         "timed, then `podman run` of the image checks the installed "
                         "packages.")
    parts += [
        "",
        "### Seconds",
        "",
        seconds_table(rows, tnames),
        "",
    ]
    if "overlay" in tnames:
        parts += ["### Ratio to kernel overlayfs (lower is better; goal = unionmount's target)",
                  "", ratio_table(rows, tnames), ""]
    d = daemon_table(rows, tnames)
    if d:
        parts += ["### FUSE daemons: CPU time during the timed phase / peak RSS (VmHWM)", "",
                  d, ""]
    mt = memory_table(memory)
    if mt:
        parts += [f"### Memory: a find over {fix['many_dirs'] * fix['many_per_dir']} files, "
                  "then `echo 2 > /proc/sys/vm/drop_caches`", "", mt, ""]
    errs = []
    for w, mode, cells in rows:
        for t, c in cells.items():
            if c.get("err"):
                errs.append(f"- {w.wid} {mode} {t}: {c['status']}: {c['err'][:300]}")
    if errs:
        parts += ["### Failures", ""] + errs + [""]
    return "\n".join(parts)


def write_all(out, info, wl, tnames, results, memory):
    LABELS.clear()
    LABELS.update(info.get("labels") or {})
    rows = aggregate(wl, tnames, results)
    md = markdown(info, wl, tnames, rows, memory)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md + "\n")
    medians = []
    for w, mode, cells in rows:
        medians.append(dict(wid=w.wid, title=w.title, kind=w.kind, mode=mode,
                            goal=w.goal(mode), goal_ms=w.goal_ms(mode),
                            unit="ms" if w.absolute else "ratio", cells=cells))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(dict(info=info, targets=tnames, medians=medians, runs=results,
                       memory=memory), f, indent=1, default=str)
    svg = svg_chart(rows, tnames)
    if svg:
        with open(os.path.join(out, "ratios.svg"), "w") as f:
            f.write(svg + "\n")
    return md
