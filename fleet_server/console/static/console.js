// Edgefleet console: draws the charts whose data the page carries in
// <script type="application/json"> blocks, and asks before forms marked data-confirm.
// No inline script anywhere: the Content-Security-Policy allows only files like this one.
"use strict";

(function () {
  const COLOURS = ["#2a6fdb", "#d9480f", "#2b8a3e", "#862e9c"];

  function seriesOf(data) {
    // A device series from the API: {points: [[ts, value], ...]}
    if (Array.isArray(data.points)) {
      return {
        x: data.points.map((p) => p[0]),
        series: [{ label: data.signal || "value", values: data.points.map((p) => p[1]) }],
      };
    }
    return data; // {x: [...], series: [{label, values}]}
  }

  function draw(el) {
    if (el.dataset.drawn === "1" || typeof uPlot === "undefined") return;
    const source = document.getElementById(el.dataset.chart);
    if (!source) return;
    const data = seriesOf(JSON.parse(source.textContent));
    const time = el.dataset.kind === "time";
    el.dataset.drawn = "1";
    el.dataset.points = String(data.x.length);
    if (data.x.length === 0) {
      el.textContent = "no data in this range";
      el.classList.add("empty");
      return;
    }
    const opts = {
      width: Math.max(300, el.clientWidth || 600),
      height: 220,
      scales: { x: { time: time } },
      series: [{}].concat(
        data.series.map((s, i) =>
          s.points
            ? {
                // observations drawn as dots only (e.g. a Weibull plot's failures)
                label: s.label,
                stroke: COLOURS[i % COLOURS.length],
                paths: () => null,
                points: { show: true, size: 6, fill: COLOURS[i % COLOURS.length] },
              }
            : {
                label: s.label,
                stroke: COLOURS[i % COLOURS.length],
                width: 1.5,
                dash: i > 0 && !time ? [4, 4] : undefined,
              }
        )
      ),
    };
    new uPlot(opts, [data.x].concat(data.series.map((s) => s.values)), el);
  }

  function drawAll(root) {
    (root || document).querySelectorAll("[data-chart]").forEach(draw);
  }

  document.addEventListener("DOMContentLoaded", () => drawAll(document));
  document.addEventListener("htmx:afterSwap", (e) => drawAll(e.target));

  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm) {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    }
  });
})();
