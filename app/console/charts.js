// Hand-written SVG charts of the numbers a verification report stores (no library, no CDN).
const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const c of children.flat()) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export const SERIES = {
  forget: { label: "forget set", color: "#d9480f" },
  holdout: { label: "held-out subjects", color: "#1c7ed6" },
  forget_unseen: { label: "same subjects, never trained", color: "#2f9e44", dash: "5 3" },
};

const frac = (counts) => {
  const total = counts.reduce((a, b) => a + b, 0) || 1;
  return counts.map((c) => c / total);
};

function tickLabel(log10) {
  const v = 10 ** log10;
  if (v >= 100 || v < 0.001) return v.toExponential(0).replace("e", "e");
  return v >= 1 ? v.toFixed(v >= 10 ? 0 : 1) : v.toPrecision(1);
}

/** One panel: the populations' loss histograms (share of samples per log-loss bin) as step areas. */
function lossPanel(edges, side, { x0, y0, w, hgt, title, yMax, yStep }) {
  const g = s("g", { class: "panel" });
  const lo = edges[0], hi = edges[edges.length - 1];
  const X = (e) => x0 + ((e - lo) / (hi - lo)) * w;
  const Y = (f) => y0 + hgt - (f / yMax) * hgt;
  g.append(s("rect", { x: x0, y: y0, width: w, height: hgt, class: "plot-bg" }));
  for (let f = 0; f <= yMax + 1e-9; f += yStep) {
    g.append(s("line", { x1: x0, x2: x0 + w, y1: Y(f), y2: Y(f), class: "grid" }));
    g.append(s("text", { x: x0 - 6, y: Y(f) + 4, class: "tick", "text-anchor": "end" }, `${Math.round(f * 100)}%`));
  }
  const step = Math.max(1, Math.round((hi - lo) / 5));
  for (let t = Math.ceil(lo); t <= hi; t += step) {
    g.append(s("line", { x1: X(t), x2: X(t), y1: y0 + hgt, y2: y0 + hgt + 4, class: "axis" }));
    g.append(s("text", { x: X(t), y: y0 + hgt + 16, class: "tick", "text-anchor": "middle" }, tickLabel(t)));
  }
  for (const [name, style] of Object.entries(SERIES)) {
    if (!side[name]) continue;
    const f = frac(side[name]);
    let d = `M ${X(edges[0])} ${Y(0)}`;
    f.forEach((v, i) => { d += ` L ${X(edges[i])} ${Y(v)} L ${X(edges[i + 1])} ${Y(v)}`; });
    d += ` L ${X(edges[edges.length - 1])} ${Y(0)}`;
    g.append(s("path", { d, fill: style.color, "fill-opacity": 0.12, stroke: style.color, "stroke-width": 2,
                         "stroke-dasharray": style.dash, class: `series series-${name}`, "data-series": name }));
  }
  g.append(s("text", { x: x0, y: y0 - 8, class: "panel-title" }, title));
  if (side.auc !== undefined) {
    g.append(s("text", { x: x0 + w, y: y0 - 8, class: "tick", "text-anchor": "end" }, `AUC ${side.auc.toFixed(3)}`));
  }
  g.append(s("text", { x: x0 + w / 2, y: y0 + hgt + 32, class: "axis-label", "text-anchor": "middle" },
             "per-sample loss (log scale)"));
  return g;
}

/** Before | after loss distributions of one attempt, from ``report.loss_hist``. */
export function lossChart(hist) {
  const W = 760, H = 250, pad = { l: 48, r: 16, t: 28, b: 40 }, gap = 40;
  const w = (W - pad.l - pad.r - gap) / 2, hgt = H - pad.t - pad.b;
  const sides = ["before", "after"].filter((k) => hist[k] && Object.keys(hist[k]).length);
  let top = 0.05;
  for (const k of sides) for (const n of Object.keys(SERIES)) if (hist[k][n]) top = Math.max(top, ...frac(hist[k][n]));
  const step = top <= 0.2 ? 0.05 : top <= 0.4 ? 0.1 : 0.25;
  const yMax = Math.min(1, Math.ceil(top / step) * step);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart loss-chart", role: "img",
                         "aria-label": "Loss distributions before and after unlearning" });
  const titles = { before: "Before: the served model", after: "After: the candidate" };
  sides.forEach((k, i) => svg.append(lossPanel(hist.edges, hist[k], {
    x0: pad.l + i * (w + gap), y0: pad.t, w: sides.length === 1 ? W - pad.l - pad.r : w, hgt, title: titles[k], yMax, yStep: step })));
  return svg;
}

export function legend(names) {
  const ul = document.createElement("ul");
  ul.className = "legend";
  for (const n of names) {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = SERIES[n].color;
    li.append(sw, SERIES[n].label);
    ul.append(li);
  }
  return ul;
}

/** MIA AUC on a 0..1 line: the pass band (reference ± margin), the candidate, and the model before. */
export function aucBand({ auc, reference, margin, before, label = "MIA AUC" }) {
  const W = 760, H = 84, x0 = 48, w = W - x0 - 16, y = 34;
  const X = (v) => x0 + Math.max(0, Math.min(1, v)) * w;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart auc-band", role: "img", "aria-label": label });
  svg.append(s("line", { x1: X(0), x2: X(1), y1: y, y2: y, class: "axis" }));
  for (let t = 0; t <= 10; t++) {
    svg.append(s("line", { x1: X(t / 10), x2: X(t / 10), y1: y - 3, y2: y + 3, class: "axis" }));
    svg.append(s("text", { x: X(t / 10), y: y + 18, class: "tick", "text-anchor": "middle" }, (t / 10).toFixed(1)));
  }
  if (reference !== null && reference !== undefined && margin !== null && margin !== undefined) {
    svg.append(s("rect", { x: X(reference - margin), y: y - 11, width: X(reference + margin) - X(reference - margin),
                           height: 22, class: "band" }));
    svg.append(s("text", { x: X(reference), y: y - 15, class: "tick", "text-anchor": "middle" },
                 `pass band ${reference.toFixed(3)} ± ${margin.toFixed(3)}`));
  }
  if (before !== null && before !== undefined) {
    svg.append(s("circle", { cx: X(before), cy: y, r: 6, class: "marker-before" }));
    // Below the "after" label when the two would collide.
    const low = auc !== null && auc !== undefined && Math.abs(X(auc) - X(before)) < 90;
    svg.append(s("text", { x: X(before), y: y + (low ? 46 : 32), class: "tick", "text-anchor": "middle" },
                 `before ${before.toFixed(3)}`));
  }
  if (auc !== null && auc !== undefined) {
    svg.append(s("path", { d: `M ${X(auc)} ${y - 9} l 7 9 l -7 9 l -7 -9 z`, class: "marker-after" }));
    svg.append(s("text", { x: X(auc), y: y + 32, class: "tick strong", "text-anchor": "middle" }, `after ${auc.toFixed(3)}`));
  }
  svg.append(s("text", { x: 0, y: y + 4, class: "tick strong" }, "AUC"));
  return svg;
}

/** Grouped bars: the candidate's forget / retain / test accuracy next to the reference's. */
export function accuracyBars(rows) {
  const W = 760, H = 200, pad = { l: 48, r: 16, t: 16, b: 34 }, hgt = H - pad.t - pad.b;
  const groupW = (W - pad.l - pad.r) / rows.length, barW = Math.min(64, groupW / 3);
  const Y = (v) => pad.t + hgt - v * hgt;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart acc-bars", role: "img",
                         "aria-label": "Accuracy next to the retrain reference" });
  for (let i = 0; i <= 4; i++) {
    svg.append(s("line", { x1: pad.l, x2: W - pad.r, y1: Y(i / 4), y2: Y(i / 4), class: "grid" }));
    svg.append(s("text", { x: pad.l - 6, y: Y(i / 4) + 4, class: "tick", "text-anchor": "end" }, `${i * 25}%`));
  }
  rows.forEach((row, i) => {
    const cx = pad.l + groupW * i + groupW / 2;
    [["candidate", row.value, -1], ["reference", row.reference, 0]].forEach(([kind, v, off]) => {
      if (v === null || v === undefined) return;
      const x = cx + off * (barW + 4) + (off === 0 ? 2 : 0);
      svg.append(s("rect", { x, y: Y(v), width: barW, height: Y(0) - Y(v), class: `bar bar-${kind}`, "data-value": v }));
      svg.append(s("text", { x: x + barW / 2, y: Y(v) - 4, class: "tick", "text-anchor": "middle" }, `${(v * 100).toFixed(1)}`));
    });
    svg.append(s("text", { x: cx, y: H - 12, class: "axis-label", "text-anchor": "middle" }, row.label));
  });
  return svg;
}
