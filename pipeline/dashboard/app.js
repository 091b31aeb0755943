// gapwatch built-in dashboard. Plain JS, no library, no network beyond this server's /api.
// Every piece of data reaches the DOM through textContent or setAttribute (never innerHTML):
// device and channel names come from MQTT topics and payloads.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const RELATIVE = new Set(["15m", "1h", "6h", "24h", "7d"]);
  const RANGES = new Set([...RELATIVE, "all", "custom"]);
  const $ = (id) => document.getElementById(id);
  const NATURAL = new Intl.Collator("en", { numeric: true }); // pump-2 before pump-10

  const state = {
    range: "1h",
    start: null,
    end: null,
    site: null,
    device: null,
    auto: true,
    refreshS: 30,
    timer: null,
    seq: 0,
    fleet: null,
    detail: null,
  };

  // ---------------------------------------------------------------- DOM helpers (escaping)

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(key, String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function setText(id, text) {
    $(id).textContent = text === null || text === undefined ? "" : String(text);
  }

  // ---------------------------------------------------------------- formatting (UTC)

  const pad = (n, w = 2) => String(n).padStart(w, "0");

  function fmtTime(ms, withSeconds = true) {
    if (ms === null || ms === undefined) return "–";
    const d = new Date(ms);
    const date = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
    const time = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
    return `${date} ${time}${withSeconds ? ":" + pad(d.getUTCSeconds()) : ""}`;
  }

  function fmtDuration(ms) {
    const s = Math.abs(ms) / 1000;
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 90 * 60) return `${Math.round(s / 60)} min`;
    if (s < 36 * 3600) return `${Math.round(s / 3600)} h`;
    if (s < 60 * 86400) return `${Math.round(s / 86400)} days`;
    if (s < 730 * 86400) return `${Math.round(s / (30 * 86400))} months`;
    return `${(s / (365.25 * 86400)).toFixed(1)} years`;
  }

  function fmtAgo(ms, now) {
    if (ms === null || ms === undefined) return "never";
    return ms > now ? `in ${fmtDuration(ms - now)}` : `${fmtDuration(now - ms)} ago`;
  }

  function fmtNum(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
    if (a >= 100) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2);
    return v.toFixed(3);
  }

  function fmtPct(r) {
    if (r === null || r === undefined) return "–";
    const p = r * 100;
    return p > 0 && p < 0.1 ? "<0.1 %" : `${p.toFixed(p < 10 ? 1 : 0)} %`;
  }

  function fmtCount(n) {
    return Number(n || 0).toLocaleString("en-US");
  }

  // ---------------------------------------------------------------- URL state

  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    const range = p.get("range");
    if (range && RANGES.has(range)) state.range = range;
    state.start = p.get("start") ? Number(p.get("start")) : null;
    state.end = p.get("end") ? Number(p.get("end")) : null;
    if (state.range === "custom" && !(state.start < state.end)) state.range = "1h";
    state.site = p.get("site");
    state.device = p.get("device");
  }

  function writeHash() {
    const p = new URLSearchParams();
    p.set("range", state.range);
    if (state.range === "custom") {
      p.set("start", String(state.start));
      p.set("end", String(state.end));
    }
    if (state.device !== null) {
      p.set("site", state.site || "");
      p.set("device", state.device);
    }
    history.replaceState(null, "", `#${p.toString()}`);
  }

  function rangeParams() {
    const p = { range: state.range };
    if (state.range === "custom") Object.assign(p, { start: state.start, end: state.end });
    return p;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(message, hint) {
      super(message);
      this.hint = hint || "";
    }
  }

  async function getJSON(path, params) {
    const url = `${path}?${new URLSearchParams(params).toString()}`;
    let resp;
    try {
      resp = await fetch(url, { cache: "no-store" });
    } catch (err) {
      throw new ApiError(
        "Cannot reach the dashboard server.",
        "It may have stopped: restart `gapwatch dashboard`, then this page recovers by itself.",
      );
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (err) {
      throw new ApiError(`The dashboard server answered HTTP ${resp.status} without JSON.`, "");
    }
    if (!resp.ok) {
      throw new ApiError(body.error || `HTTP ${resp.status}`, body.hint || "");
    }
    return body;
  }

  // ---------------------------------------------------------------- banner and page states

  function showBanner(err) {
    setText("banner-title", err.message || String(err));
    setText("banner-hint", err.hint || "");
    $("banner").hidden = false;
    $("main").classList.add("stale");
    const never = state.fleet === null;
    $("loading").hidden = !never;
    if (never) {
      const again = state.auto && state.range !== "custom" ? `retrying every ${state.refreshS} s` : "reload the page to retry";
      setText("loading", `Nothing to show until this is fixed; ${again}.`);
    }
  }

  function hideBanner() {
    $("banner").hidden = true;
    $("main").classList.remove("stale");
  }

  function showEmpty(title, hint, offerAll) {
    setText("empty-title", title);
    setText("empty-hint", hint);
    $("empty-all").hidden = !offerAll;
    $("empty").hidden = false;
  }

  // ---------------------------------------------------------------- refresh loop

  function schedule() {
    clearTimeout(state.timer);
    if (state.auto && state.range !== "custom") {
      state.timer = setTimeout(refresh, state.refreshS * 1000);
    }
  }

  async function refresh() {
    const seq = ++state.seq;
    clearTimeout(state.timer);
    try {
      const fleet = await getJSON("api/fleet", rangeParams());
      if (seq !== state.seq) return;
      state.fleet = fleet;
      renderFleet(fleet);
      pickDefaultDevice(fleet);
      if (state.device !== null && fleet.devices.length) {
        const detail = await getJSON("api/device", {
          ...rangeParams(),
          site: state.site || "",
          device: state.device,
        });
        if (seq !== state.seq) return;
        state.detail = detail;
        renderDetail(detail);
      }
      hideBanner();
      document.body.dataset.loaded = "true";
      setText("updated", `updated ${fmtTime(Date.now())} UTC`);
    } catch (err) {
      if (seq !== state.seq) return;
      showBanner(err);
      document.body.dataset.loaded = "error";
    } finally {
      if (seq === state.seq) schedule();
    }
  }

  function pickDefaultDevice(fleet) {
    const devices = fleet.devices;
    const known = devices.some((d) => d.site === (state.site || "") && d.device === state.device);
    if (known || !devices.length) return;
    const pick =
      devices.find((d) => d.alarms > 0) || devices.find((d) => d.ticks > 0) || devices[0];
    state.site = pick.site;
    state.device = pick.device;
    writeHash();
  }

  // ---------------------------------------------------------------- fleet overview

  function liveness(lastSeen, now) {
    if (lastSeen === null || lastSeen === undefined) return ["", "no readings"];
    const age = now - lastSeen;
    if (age < 5 * 60 * 1000) return ["live", "reporting"];
    if (age < 60 * 60 * 1000) return ["quiet", "quiet for a while"];
    return ["", "not reporting"];
  }

  function renderFleet(f) {
    $("loading").hidden = true;
    setText("source", f.source);
    const empty = f.state === "empty";
    $("empty").hidden = true;
    if (empty) showEmpty(f.message, f.hint, false);
    else if (f.state === "out_of_range") showEmpty(f.message, f.hint, true);
    $("cards").hidden = empty;
    $("layout").hidden = empty;
    if (empty) return;

    const t = f.totals;
    setText("total-devices", fmtCount(t.devices));
    setText("total-active", `${fmtCount(t.active)} with readings in range`);
    setText("total-alarms", (f.alarms_complete ? "" : "≥ ") + fmtCount(t.alarms));
    $("total-alarms").parentElement.classList.toggle("hot", t.alarms > 0);
    setText("total-flagged", `${fmtCount(t.flagged)} flagged ticks of ${fmtCount(t.ticks)}`);
    setText("total-imputed", fmtPct(t.imputation_rate));
    setText("newest", fmtTime(f.newest_ms));
    setText("newest-ago", fmtAgo(f.newest_ms, f.now_ms));
    setText("range-label", f.range.label);
    setText(
      "range-span",
      f.range.start_ms === null ? "every stored reading" : `from ${fmtTime(f.range.start_ms, false)}`,
    );

    const body = $("fleet-body");
    const byName = (a, b) => NATURAL.compare(a.site, b.site) || NATURAL.compare(a.device, b.device);
    body.replaceChildren(
      ...[...f.devices].sort(byName).map((d) => {
        const [cls, what] = liveness(d.last_seen_ms, f.now_ms);
        const selected = d.device === state.device && d.site === (state.site || "");
        const row = el(
          "tr",
          {
            class: ["device-row", selected ? "selected" : "", d.ticks ? "" : "idle"].join(" ").trim(),
            "data-site": d.site,
            "data-device": d.device,
            "data-alarms": d.alarms,
            tabindex: 0,
          },
          el("td", {}, el("span", { class: "device-name", title: d.device }, d.device), el("span", { class: "site-name", title: d.site }, d.site)),
          el(
            "td",
            { class: "seen", title: `${what}; last tick ${fmtTime(d.last_seen_ms)} UTC` },
            el("span", { class: `dot ${cls}` }),
            fmtTime(d.last_seen_ms, false),
            el("span", { class: "ago" }, fmtAgo(d.last_seen_ms, f.now_ms)),
          ),
          el("td", { class: "num" }, fmtCount(d.ticks)),
          el("td", { class: "num", title: "mean share of imputed channels per tick" }, fmtPct(d.imputation_rate)),
          el(
            "td",
            { class: "num", title: `${fmtCount(d.alarms)} alarms, ${fmtCount(d.flagged)} flagged ticks` },
            el("span", { class: d.alarms > 0 ? "badge hot alarm-count" : "badge alarm-count" }, fmtCount(d.alarms)),
            el("span", { class: "ago flagged-count" }, d.flagged ? `${fmtCount(d.flagged)} ticks` : ""),
          ),
          el("td", { class: "model" }, d.model_version || "–"),
        );
        row.addEventListener("click", () => selectDevice(d.site, d.device));
        row.addEventListener("keydown", (ev) => {
          if (ev.key === "Enter" || ev.key === " ") selectDevice(d.site, d.device);
        });
        return row;
      }),
    );

    renderAlarms(f.alarms, f.totals.alarms, f.alarms_complete);
  }

  function renderAlarms(alarms, total, complete) {
    const of = complete ? fmtCount(total) : `at least ${fmtCount(total)}`;
    setText("alarm-count", alarms.length < total || !complete ? `(newest ${alarms.length} of ${of})` : `(${of})`);
    $("alarm-none").hidden = alarms.length > 0;
    $("alarm-body").replaceChildren(
      ...alarms.map((e) => {
        const lasted = e.end_ms > e.start_ms ? fmtDuration(e.end_ms - e.start_ms) : "1 tick";
        const row = el(
          "tr",
          { class: "alarm-row", "data-device": e.device },
          el("td", { class: "seen" }, fmtTime(e.start_ms), el("span", { class: "ago" }, `${lasted}, ${fmtCount(e.ticks)} flagged`)),
          el("td", {}, el("span", { class: "device-name", title: e.device }, e.device), el("span", { class: "site-name", title: e.site }, e.site)),
          el("td", { class: "num", title: `peak at ${fmtTime(e.peak_ms)} UTC` }, fmtNum(e.peak_score)),
          el("td", {}, e.top_channels.map((c) => el("span", { class: "chip" }, c))),
        );
        row.addEventListener("click", () => selectDevice(e.site, e.device));
        return row;
      }),
    );
  }

  function selectDevice(site, device) {
    state.site = site;
    state.device = device;
    writeHash();
    for (const row of $("fleet-body").children) {
      row.classList.toggle("selected", row.dataset.device === device && row.dataset.site === site);
    }
    refresh();
  }

  // ---------------------------------------------------------------- device detail

  function renderDetail(d) {
    setText("detail-title", d.site ? `${d.device} · ${d.site}` : d.device);
    const empty = d.state !== "ok";
    $("detail-empty").hidden = !empty;
    $("legend").hidden = empty;
    if (empty) {
      setText("detail-empty", `${d.message} ${d.hint}`);
      setText("detail-meta", d.last_seen_ms ? `last reading ${fmtTime(d.last_seen_ms)} UTC` : "");
      $("score-chart").replaceChildren();
      $("channel-charts").replaceChildren();
      return;
    }
    const how = d.interval_ms
      ? `averaged per ${fmtDuration(d.interval_ms)} (circle area = share of imputed values)`
      : "raw ticks";
    const alarms = `${d.alarms_complete ? "" : "≥ "}${d.alarms.length} alarm${d.alarms.length === 1 ? "" : "s"} in range`;
    setText("detail-meta", `${fmtCount(d.times.length)} points, ${how} · ${alarms}`);
    drawDetailCharts(d);
  }

  function drawDetailCharts(d) {
    const x0 = d.range.start_ms ?? d.times[0];
    const x1 = d.range.end_ms ?? d.times[d.times.length - 1];
    const gap = gapLimit(d.times, d.interval_ms);
    const markers = d.alarms.map((e) => ({
      t: e.start_ms,
      t2: e.end_ms,
      channels: e.top_channels,
      label: e.top_channels.slice(0, 3).join(", ") || "alarm",
      title:
        `alarm ${fmtTime(e.start_ms)} – ${fmtTime(e.end_ms)} UTC, ${e.ticks} flagged ticks · ` +
        `peak ${fmtNum(e.peak_score)} · top channels: ${e.top_channels.join(", ") || "–"}`,
    }));
    const flagged = d.times.map((_, i) => d.flagged[i]);
    const yCap = robustCap(d.score, d.threshold);
    const clipped = yCap !== null ? ` · clipped above ${fmtNum(yCap)}` : "";
    const scoreHost = $("score-chart");
    scoreHost.replaceChildren(
      chartTitle("anomaly score vs threshold", `${fmtCount(flagged.filter(Boolean).length)} flagged${clipped}`),
    );
    scoreHost.append(
      chart(scoreHost.clientWidth, {
        height: 190,
        x0,
        x1,
        times: d.times,
        gap,
        markers,
        markerRows: 2,
        yCap,
        layers: [
          { kind: "line", values: d.smoothed, cls: "smoothed" },
          { kind: "line", values: d.threshold, cls: "threshold" },
          { kind: "line", values: d.score, cls: "score" },
          { kind: "dots", values: d.score, mask: flagged, cls: "flagged", r: 3 },
        ],
        tip: (i) => [
          [fmtTime(d.times[i]) + " UTC", "t"],
          [`score ${fmtNum(d.score[i])}   threshold ${fmtNum(d.threshold[i])}`, d.flagged[i] ? "bad" : ""],
          [`smoothed ${fmtNum(d.smoothed[i])}${d.flagged[i] ? "   ⚑ flagged" : ""}`, d.flagged[i] ? "bad" : ""],
        ],
      }),
    );
    const channelHost = $("channel-charts");
    channelHost.replaceChildren();
    for (const c of d.channels) {
      const imputedMask = c.imputed.map((share) => share > 0);
      const nImputed = imputedMask.filter(Boolean).length;
      const lower = c.values.map((v, i) => (c.sigma[i] === null || v === null ? null : v - c.sigma[i]));
      const upper = c.values.map((v, i) => (c.sigma[i] === null || v === null ? null : v + c.sigma[i]));
      const wrap = el("div", { class: "channel", "data-channel": c.name });
      wrap.append(chartTitle(c.name, `${fmtCount(nImputed)} of ${fmtCount(c.values.filter((v) => v !== null).length)} points imputed`));
      channelHost.append(wrap);
      wrap.append(
        chart(wrap.clientWidth, {
          height: 150,
          x0,
          x1,
          times: d.times,
          gap,
          markers: markers.filter((mk) => mk.channels.includes(c.name)),
          markerLabel: (mk) => `alarm · #${mk.channels.indexOf(c.name) + 1} channel`,
          layers: [
            { kind: "band", lower, upper, cls: "band" },
            { kind: "line", values: c.values, cls: "observed" },
            {
              kind: "dots",
              values: c.values,
              mask: imputedMask,
              cls: "imputed",
              // raw ticks: a fixed circle; buckets: the area grows with the imputed share
              r: d.interval_ms ? (i) => 1 + 3 * Math.sqrt(c.imputed[i]) : nImputed > 300 ? 2 : 3,
            },
          ],
          tip: (i) => {
            const share = c.imputed[i];
            const lines = [[fmtTime(d.times[i]) + " UTC", "t"], [`${c.name} = ${fmtNum(c.values[i])}`, ""]];
            if (share > 0) {
              const part = d.interval_ms ? ` (${fmtPct(share)} of the bucket)` : "";
              lines.push([`imputed${part} · σ ${fmtNum(c.sigma[i])}`, "imp"]);
            } else {
              lines.push(["observed", ""]);
            }
            return lines;
          },
        }),
      );
    }
  }

  function chartTitle(name, stat) {
    return el("div", { class: "chart-title" }, el("span", { class: "name" }, name), el("span", { class: "stat" }, stat));
  }

  function gapLimit(times, intervalMs) {
    if (intervalMs) return intervalMs * 3.5;
    const steps = [];
    for (let i = 1; i < times.length; i++) steps.push(times[i] - times[i - 1]);
    if (!steps.length) return Infinity;
    steps.sort((a, b) => a - b);
    return Math.max(steps[Math.floor(steps.length / 2)] * 3.5, 1);
  }

  // ---------------------------------------------------------------- SVG charts

  const MAX_LABELLED = 12;

  function robustCap(score, threshold) {
    // a y-axis cap so that a few huge scores do not flatten the rest: the 98th percentile of
    // the scores (+10 %) or 1.5 x the highest threshold, whichever is higher; null if no cap
    const finite = score.filter((v) => v !== null && Number.isFinite(v)).sort((a, b) => a - b);
    if (finite.length < 50) return null;
    const thresholds = threshold.filter((v) => v !== null && Number.isFinite(v));
    const p98 = finite[Math.floor(0.98 * (finite.length - 1))];
    const cap = Math.max(p98 * 1.1, thresholds.length ? Math.max(...thresholds) * 1.5 : -Infinity);
    return cap < finite[finite.length - 1] ? cap : null;
  }

  const TIME_STEPS = [
    1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3,
    10800e3, 21600e3, 43200e3, 86400e3, 172800e3, 259200e3, 604800e3, 1209600e3, 2592000e3,
    7776000e3, 15552000e3, 31536000e3,
  ];

  function niceStep(span, count) {
    const raw = span / Math.max(count, 1);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const err = raw / mag;
    return mag * (err >= 7.07 ? 10 : err >= 3.16 ? 5 : err >= 1.41 ? 2 : 1);
  }

  function timeLabel(ms, step, span) {
    const d = new Date(ms);
    const date = `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
    const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
    if (step >= 31536000e3) return String(d.getUTCFullYear());
    if (step >= 86400e3) return span < 300 * 86400e3 ? date : `${d.getUTCFullYear()}-${date}`;
    if (step < 60e3) return `${hm}:${pad(d.getUTCSeconds())}`;
    return span > 86400e3 ? `${date} ${hm}` : hm;
  }

  function extent(layers) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const layer of layers) {
      for (const arr of [layer.values, layer.lower, layer.upper]) {
        if (!arr) continue;
        for (const v of arr) {
          if (v === null || !Number.isFinite(v)) continue;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
      }
    }
    if (lo === Infinity) return [0, 1];
    if (lo === hi) return [lo - (Math.abs(lo) || 1) * 0.1, hi + (Math.abs(hi) || 1) * 0.1];
    const padY = (hi - lo) * 0.06;
    return [lo - padY, hi + padY];
  }

  let chartSeq = 0;

  function chart(hostWidth, spec) {
    const host = el("div", { class: "plot" });
    const width = Math.max(Math.floor(hostWidth) || 600, 280);
    const rows = spec.markerRows || 1;
    const m = { l: 54, r: 12, t: spec.markers.length ? 6 + 13 * rows : 8, b: 22 };
    const w = width - m.l - m.r;
    const h = spec.height - m.t - m.b;
    let [x0, x1] = [spec.x0, spec.x1];
    if (!(x1 > x0)) [x0, x1] = [x0 - 30e3, x0 + 30e3];
    let [y0, y1] = extent(spec.layers);
    if (spec.yCap !== null && spec.yCap !== undefined && spec.yCap < y1) y1 = spec.yCap;
    const sx = (t) => m.l + ((t - x0) / (x1 - x0)) * w;
    const sy = (v) => m.t + h - ((v - y0) / (y1 - y0)) * h;
    const root = svg("svg", { width, height: spec.height, viewBox: `0 0 ${width} ${spec.height}`, role: "img" });

    // grid and axes
    const ystep = niceStep(y1 - y0, Math.max(2, Math.round(h / 38)));
    const decimals = Math.min(Math.max(0, -Math.floor(Math.log10(ystep) + 1e-9)), 8);
    const big = Math.max(Math.abs(y0), Math.abs(y1)) >= 1e6;
    for (let k = Math.ceil(y0 / ystep); k * ystep <= y1; k++) {
      const v = k * ystep;
      const y = sy(v);
      root.append(svg("line", { class: "grid", x1: m.l, x2: m.l + w, y1: y, y2: y }));
      root.append(svg("text", { x: m.l - 6, y: y + 4, "text-anchor": "end" }, big ? v.toExponential(1) : v.toFixed(decimals)));
    }
    const span = x1 - x0;
    const want = Math.max(3, Math.floor(w / 80));
    const tstep = TIME_STEPS.find((s) => span / s <= want) || TIME_STEPS[TIME_STEPS.length - 1];
    for (let t = Math.ceil(x0 / tstep) * tstep; t <= x1; t += tstep) {
      const x = sx(t);
      root.append(svg("line", { class: "grid", x1: x, x2: x, y1: m.t, y2: m.t + h }));
      root.append(svg("text", { x, y: m.t + h + 15, "text-anchor": "middle" }, timeLabel(t, tstep, span)));
    }
    root.append(svg("line", { class: "axis", x1: m.l, x2: m.l + w, y1: m.t + h, y2: m.t + h }));

    // alarm markers: a dashed line each; a label in the first row where it overlaps nothing
    const rowEnds = new Array(rows).fill(-Infinity);
    const sorted = spec.markers.filter((mk) => mk.t2 >= x0 && mk.t <= x1).sort((a, b) => a.t - b.t);
    for (const mk of sorted) {
      const x = sx(Math.max(mk.t, x0));
      const x2 = sx(Math.min(mk.t2, x1));
      root.append(svg("rect", { class: "episode", x, y: m.t, width: Math.max(x2 - x, 1.5), height: h }, svg("title", {}, mk.title)));
      root.append(svg("line", { class: "marker", x1: x, x2: x, y1: m.t - 4 - 13 * (rows - 1), y2: m.t + h }, svg("title", {}, mk.title)));
      if (sorted.length > MAX_LABELLED) continue; // many alarms: lines only, details on hover
      const label = spec.markerLabel ? spec.markerLabel(mk) : mk.label;
      const textWidth = label.length * 7;
      const right = x + 3 + textWidth > m.l + w;
      const start = right ? x - 3 - textWidth : x + 3;
      const row = rowEnds.findIndex((end) => start >= end + 6);
      if (row < 0) continue;
      rowEnds[row] = start + textWidth;
      const y = m.t - 6 - 13 * (rows - 1 - row);
      const attrs = { class: "marker-label", x: right ? x - 3 : x + 3, y, "text-anchor": right ? "end" : "start" };
      root.append(svg("text", attrs, label, svg("title", {}, mk.title)));
    }

    // data layers, clipped to the plot area (a capped axis leaves spikes outside)
    const clipId = `clip-${++chartSeq}`;
    root.append(svg("defs", {}, svg("clipPath", { id: clipId }, svg("rect", { x: m.l, y: m.t - 2, width: w, height: h + 4 }))));
    const plot = svg("g", { "clip-path": `url(#${clipId})` });
    const times = spec.times;
    const segments = (values) => {
      const runs = [];
      let run = [];
      for (let i = 0; i < times.length; i++) {
        const v = values[i];
        const broken = run.length && times[i] - times[run[run.length - 1]] > spec.gap;
        if (v === null || broken) {
          if (run.length) runs.push(run);
          run = [];
        }
        if (v !== null) run.push(i);
      }
      if (run.length) runs.push(run);
      return runs;
    };
    for (const layer of spec.layers) {
      if (layer.kind === "line") {
        const d = segments(layer.values)
          .map((run) => run.map((i, k) => `${k ? "L" : "M"}${sx(times[i]).toFixed(1)},${sy(layer.values[i]).toFixed(1)}`).join(""))
          .join("");
        if (d) plot.append(svg("path", { class: `line ${layer.cls}`, d }));
        for (const run of segments(layer.values)) {
          if (run.length === 1) {
            plot.append(svg("circle", { class: `solo ${layer.cls}`, cx: sx(times[run[0]]), cy: sy(layer.values[run[0]]), r: 1.6 }));
          }
        }
      } else if (layer.kind === "band") {
        const both = layer.lower.map((v, i) => (v === null || layer.upper[i] === null ? null : v));
        for (const run of segments(both)) {
          if (run.length === 1) {
            const i = run[0];
            plot.append(svg("rect", { class: layer.cls, x: sx(times[i]) - 2, width: 4, y: sy(layer.upper[i]), height: Math.max(sy(layer.lower[i]) - sy(layer.upper[i]), 1) }));
            continue;
          }
          const top = run.map((i) => `${sx(times[i]).toFixed(1)},${sy(layer.upper[i]).toFixed(1)}`);
          const bottom = run.slice().reverse().map((i) => `${sx(times[i]).toFixed(1)},${sy(layer.lower[i]).toFixed(1)}`);
          plot.append(svg("polygon", { class: layer.cls, points: top.concat(bottom).join(" ") }));
        }
      } else if (layer.kind === "dots") {
        const g = svg("g", { class: `dots ${layer.cls}` });
        for (let i = 0; i < times.length; i++) {
          if (layer.mask[i] && layer.values[i] !== null) {
            const r = typeof layer.r === "function" ? layer.r(i) : layer.r;
            g.append(svg("circle", { class: layer.cls, cx: sx(times[i]).toFixed(1), cy: sy(layer.values[i]).toFixed(1), r: r.toFixed(2) }));
          }
        }
        plot.append(g);
      }
    }
    root.append(plot);

    // hover
    const guide = svg("line", { class: "guide", y1: m.t, y2: m.t + h, visibility: "hidden" });
    const hover = svg("rect", { class: "hover", x: m.l, y: m.t, width: w, height: h });
    root.append(guide, hover);
    hover.addEventListener("mousemove", (ev) => {
      if (!times.length) return;
      const box = root.getBoundingClientRect();
      const t = x0 + ((ev.clientX - box.left - m.l) / w) * (x1 - x0);
      const i = nearest(times, t);
      const x = sx(times[i]);
      guide.setAttribute("x1", x);
      guide.setAttribute("x2", x);
      guide.setAttribute("visibility", "visible");
      const during = spec.markers.filter((mk) => mk.t <= times[i] && times[i] <= mk.t2);
      showTip(ev, spec.tip(i).concat(during.map((mk) => [`⚠ ${mk.title}`, "bad"])));
    });
    hover.addEventListener("mouseleave", () => {
      guide.setAttribute("visibility", "hidden");
      $("tooltip").hidden = true;
    });
    host.append(root);
    return host;
  }

  function nearest(times, t) {
    let lo = 0;
    let hi = times.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (times[mid] < t) lo = mid;
      else hi = mid;
    }
    return Math.abs(times[lo] - t) <= Math.abs(times[hi] - t) ? lo : hi;
  }

  function showTip(ev, lines) {
    const tip = $("tooltip");
    tip.replaceChildren(...lines.map(([text, cls]) => el("div", { class: cls || null }, text)));
    tip.hidden = false;
    const pad = 14;
    const left = Math.min(ev.clientX + pad, window.innerWidth - tip.offsetWidth - 4);
    const top = Math.min(ev.clientY + pad, window.innerHeight - tip.offsetHeight - 4);
    tip.style.left = `${Math.max(left, 4)}px`;
    tip.style.top = `${Math.max(top, 4)}px`;
  }

  // ---------------------------------------------------------------- controls

  function toLocalInput(ms) {
    return fmtTime(ms).replace(" ", "T");
  }

  function fromLocalInput(text) {
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(text);
    if (!m) return null;
    return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
  }

  function markRange() {
    for (const b of $("ranges").querySelectorAll("button")) {
      b.classList.toggle("active", b.dataset.range === state.range);
    }
    $("custom").hidden = state.range !== "custom";
  }

  function setRange(range) {
    if (range === "custom") {
      const f = state.fleet;
      const end = state.end || (f && f.range.end_ms) || (f && f.newest_ms) || Date.now();
      const start = state.start || (f && f.range.start_ms) || end - 3600e3;
      $("custom-start").value = toLocalInput(start);
      $("custom-end").value = toLocalInput(end);
      state.range = "custom";
      markRange();
      $("custom-start").focus();
      return;
    }
    state.range = range;
    markRange();
    writeHash();
    refresh();
  }

  function init() {
    readHash();
    markRange();
    if (state.range === "custom") {
      $("custom-start").value = toLocalInput(state.start);
      $("custom-end").value = toLocalInput(state.end);
    }
    $("ranges").addEventListener("click", (ev) => {
      const button = ev.target.closest("button[data-range]");
      if (button) setRange(button.dataset.range);
    });
    $("custom").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const start = fromLocalInput($("custom-start").value);
      const end = fromLocalInput($("custom-end").value);
      if (start === null || end === null || !(start < end)) {
        showBanner(new ApiError("The custom range is not valid.", "Give a start before the end (both UTC)."));
        return;
      }
      Object.assign(state, { range: "custom", start, end });
      writeHash();
      refresh();
    });
    $("empty-all").addEventListener("click", () => setRange("all"));
    $("auto").addEventListener("change", (ev) => {
      state.auto = ev.target.checked;
      schedule();
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (state.detail && state.detail.state === "ok") drawDetailCharts(state.detail);
      }, 150);
    });
    window.addEventListener("hashchange", () => {
      readHash();
      markRange();
      refresh();
    });
    getJSON("api/config", {})
      .then((cfg) => {
        state.refreshS = cfg.refresh_s || state.refreshS;
        setText("source", cfg.source);
      })
      .catch(() => {}) // the fleet request below reports the same failure in the banner
      .finally(refresh);
  }

  document.addEventListener("DOMContentLoaded", init);
})();
