// Draws the report's charts from the JSON block #tm-figures. Data only ever arrives as JSON
// (never as code); without JavaScript the page still shows findings and tables.
(function () {
  "use strict";
  // Marks let tests and benchmarks time the drawing apart from parsing plotly.js.
  performance.mark("tracemortem:draw-start");
  document.querySelectorAll(".no-js").forEach(function (el) { el.remove(); });
  var figures = JSON.parse(document.getElementById("tm-figures").textContent);
  var font = getComputedStyle(document.body).fontFamily;
  var base = {
    font: { family: font, size: 12, color: "#1f2933" },
    margin: { l: 64, r: 24, t: 12, b: 48 },
    height: 320,
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "#ffffff",
    hovermode: "closest",
    legend: { orientation: "h", y: -0.22 },
  };
  var axis = { gridcolor: "#e4e7eb", zerolinecolor: "#cbd2d9", linecolor: "#cbd2d9", automargin: true, exponentformat: "e" };

  // The gradient heatmap travels as one byte per cell (see charts.py): 0 no data, 1 zero,
  // 2..254 log10(norm) between zmin and zmax, 255 non-finite (drawn as markers instead).
  function decodeHeatmap(trace) {
    var raw = atob(trace.bytes);
    var L = trace.levels, cols = trace.x.length, rows = trace.y.length;
    var scale = (trace.zmax - trace.zmin) / (L[3] - L[2]);
    var z = new Array(rows);
    for (var r = 0; r < rows; r++) {
      var row = new Array(cols);
      for (var c = 0; c < cols; c++) {
        var level = raw.charCodeAt(r * cols + c);
        if (level === L[0] || level === L[4]) row[c] = null;
        else if (level === L[1]) row[c] = trace.zmin;
        else row[c] = trace.zmin + (level - L[2]) * scale;
      }
      z[r] = row;
    }
    delete trace.bytes;
    delete trace.levels;
    trace.z = z;
  }

  function merge(target, extra) {
    Object.keys(extra).forEach(function (key) {
      if (target[key] === undefined) target[key] = extra[key];
      else if (typeof target[key] === "object" && !Array.isArray(target[key])) merge(target[key], extra[key]);
    });
    return target;
  }

  document.querySelectorAll("[data-figure]").forEach(function (div) {
    var figure = figures[div.getAttribute("data-figure")];
    if (!figure) return;
    figure.data.forEach(function (trace) {
      if (trace.type === "heatmap" && trace.bytes !== undefined) decodeHeatmap(trace);
    });
    var layout = merge(figure.layout, base);
    Object.keys(layout).forEach(function (key) {
      if (/^[xy]axis\d*$/.test(key)) merge(layout[key], axis);
    });
    Plotly.newPlot(div, figure.data, layout, {
      displaylogo: false,
      responsive: true,
      showLink: false,
      showSendToCloud: false,
      modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"],
    });
  });
  performance.mark("tracemortem:draw-end");
})();
