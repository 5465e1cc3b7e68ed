// The console's own script: the CSRF header on htmx requests, the run page's live panel
// (server-sent events) and its charts (uPlot). No inline script: the page's CSP forbids it.
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  // Phase bars: their offsets come as data attributes (a style attribute would break the CSP).
  function applyBars(root) {
    root.querySelectorAll(".fill[data-left]").forEach(function (el) {
      el.style.marginLeft = el.getAttribute("data-left") + "%";
      el.style.width = el.getAttribute("data-width") + "%";
    });
  }

  function chart(el, title, series, data) {
    if (!el || typeof uPlot === "undefined") return null;
    var opts = {
      title: title,
      width: Math.max(el.clientWidth, 320),
      height: 200,
      scales: { x: { time: true } },
      axes: [{}, { size: 60 }],
      series: [{}].concat(series),
      legend: { live: true },
    };
    return new uPlot(opts, data, el);
  }

  function startRunPage(root) {
    applyBars(root);
    var history = [];
    var raw = document.getElementById("history");
    if (raw) {
      try { history = JSON.parse(raw.textContent || "[]"); } catch (e) { history = []; }
    }
    var cols = { t: [], rate: [], throttled: [], cap: [] };
    function push(s) {
      cols.t.push(s.t);
      cols.rate.push(s.rate);
      cols.throttled.push(s.throttled);
      cols.cap.push(s.concurrency);
      if (cols.t.length > 1800) {
        Object.keys(cols).forEach(function (k) { cols[k].shift(); });
      }
    }
    history.forEach(push);
    var rateChart = chart(document.getElementById("chart-rate"), "tasks/s and 429s/s", [
      { label: "done /s", stroke: "#2563eb", width: 2, spanGaps: true },
      { label: "429 or 503 /s", stroke: "#dc2626", width: 2, spanGaps: true },
    ], [cols.t, cols.rate, cols.throttled]);
    var capChart = chart(document.getElementById("chart-cap"), "concurrency cap", [
      { label: "cap", stroke: "#7c3aed", width: 2, spanGaps: true },
    ], [cols.t, cols.cap]);

    var panel = document.getElementById("panel");
    var source = new EventSource(root.getAttribute("data-events"));
    source.addEventListener("progress", function (event) {
      var msg = JSON.parse(event.data);
      panel.innerHTML = msg.html;
      applyBars(panel);
      push(msg.sample);
      if (rateChart) rateChart.setData([cols.t, cols.rate, cols.throttled]);
      if (capChart) capChart.setData([cols.t, cols.cap]);
      root.setAttribute("data-updates", String(Number(root.getAttribute("data-updates") || "0") + 1));
    });
    source.addEventListener("end", function () {
      source.close();
      root.setAttribute("data-ended", "true");
    });
    window.addEventListener("resize", function () {
      [rateChart, capChart].forEach(function (c) {
        if (c) c.setSize({ width: Math.max(c.root.parentNode.clientWidth, 320), height: 200 });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var root = document.getElementById("run");
    if (root) startRunPage(root);
  });
})();
