// Draws the report's charts from the JSON block #tm-figures with a few SVG/canvas helpers (no
// chart library: see docs/report.md for the measurements behind that choice). Data only ever
// arrives as JSON and every string from it is set as text (textContent), never as markup;
// without JavaScript the page still shows findings and tables.
(function () {
  "use strict";
  // Marks let tests and benchmarks time the drawing.
  performance.mark("tracemortem:draw-start");
  document.querySelectorAll(".no-js").forEach(function (node) { node.remove(); });
  var figures = JSON.parse(document.getElementById("tm-figures").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#1565c0", "#ef6c00", "#2e7d32", "#8e24aa", "#00838f", "#c0ca33", "#6d4c41", "#d81b60", "#546e7a", "#f9a825"];
  var BAD = "#c62828";
  var MARGIN = { top: 10, right: 16, bottom: 44, left: 60 };

  function svgNode(tag, attrs, parent) {
    var node = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) parent.appendChild(node);
    return node;
  }
  function label(parent, x, y, str, cls, anchor) {
    var node = svgNode("text", { x: x, y: y, class: cls || "", "text-anchor": anchor || "middle" }, parent);
    node.textContent = str;
    return node;
  }
  // A shortened label with its full text as the hover title (kept outside the <text>, so the
  // label's own text stays exactly what is drawn).
  function titled(parent, full) {
    var group = svgNode("g", {}, parent);
    svgNode("title", {}, group).textContent = full;
    return group;
  }
  var clips = 0;
  function clipTo(svg, box) {
    var id = "tm-clip-" + ++clips;
    var path = svgNode("clipPath", { id: id }, svgNode("defs", {}, svg));
    svgNode("rect", { x: box.l, y: box.t, width: box.r - box.l, height: box.b - box.t }, path);
    return "url(#" + id + ")";
  }
  function fit(str, chars) { return str.length <= chars ? str : str.slice(0, Math.max(1, chars - 1)) + "…"; }

  // --- the tooltip: one shared box, filled with text nodes only ---------------------------
  var tip = document.createElement("div");
  tip.className = "tm-tip";
  tip.hidden = true;
  document.body.appendChild(tip);
  function showTip(event, lines) {
    tip.textContent = "";
    lines.forEach(function (line) {
      var row = document.createElement("div");
      row.textContent = line;
      tip.appendChild(row);
    });
    tip.hidden = false;
    var x = event.clientX + 14, y = event.clientY + 14;
    var box = tip.getBoundingClientRect();
    if (x + box.width > window.innerWidth - 4) x = Math.max(4, event.clientX - box.width - 14);
    if (y + box.height > window.innerHeight - 4) y = Math.max(4, event.clientY - box.height - 14);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { tip.hidden = true; }

  // --- numbers and scales ------------------------------------------------------------------
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return String(v);
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2).replace(/\.?0+e/, "e").replace("e+", "e");
    return String(Number(v.toPrecision(4)));
  }
  function niceStep(span, count, integer) {
    var raw = span / Math.max(1, count), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; }).find(function (s) { return s >= raw; }) || 10 * mag;
    return integer ? Math.max(1, Math.round(step)) : step;
  }
  function scale(lo, hi, from, to, log) {
    var f = log ? Math.log10 : function (v) { return v; };
    var a = f(lo), b = f(hi);
    if (b === a) { a -= 0.5; b += 0.5; }
    var s = function (v) { return from + (f(v) - a) / (b - a) * (to - from); };
    s.invert = function (p) { var u = a + (p - from) / (to - from) * (b - a); return log ? Math.pow(10, u) : u; };
    s.ticks = function (count, integer) {
      var out = [];
      if (log) {
        var k0 = Math.ceil(a), k1 = Math.floor(b), every = Math.max(1, Math.ceil((k1 - k0 + 1) / count));
        for (var k = k0; k <= k1; k += every) out.push(Math.pow(10, k));
        if (!out.length) out.push(lo, hi);
        return out;
      }
      var step = niceStep(b - a, count, integer);
      // a narrow axis may fit one "nice" step only: halve it until two ticks show
      for (;;) {
        out = [];
        for (var t = Math.ceil(a / step) * step; t <= b + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
        if (out.length >= 2 || (integer && step <= 1) || step < (b - a) * 1e-6) return out;
        step = integer ? Math.max(1, Math.floor(step / 2)) : step / 2;
      }
    };
    return s;
  }
  function extent(values, positive) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) {
      if (v === null || !isFinite(v) || (positive && v <= 0)) return;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    });
    return lo <= hi ? [lo, hi] : null;
  }

  function axes(svg, x, y, box, fig, opts) {
    var grid = svgNode("g", { class: "grid" }, svg);
    var xt = svgNode("g", { class: "xtick" }, svg), yt = svgNode("g", { class: "ytick" }, svg);
    x.ticks(Math.max(2, Math.floor((box.r - box.l) / 80)), opts.integerX).forEach(function (t) {
      svgNode("line", { x1: x(t), x2: x(t), y1: box.t, y2: box.b }, grid);
      label(xt, x(t), box.b + 16, fmt(t), "tick");
    });
    y.ticks(Math.max(2, Math.floor((box.b - box.t) / 45)), false).forEach(function (t) {
      svgNode("line", { x1: box.l, x2: box.r, y1: y(t), y2: y(t) }, grid);
      label(yt, box.l - 6, y(t) + 4, fmt(t), "tick", "end");
    });
    svgNode("rect", { x: box.l, y: box.t, width: box.r - box.l, height: box.b - box.t, class: "frame" }, svg);
    if (fig.x_title) label(svg, (box.l + box.r) / 2, box.b + 36, fig.x_title, "axis-title");
    if (fig.y_title) {
      var t = label(svg, 0, 0, fig.y_title, "axis-title");
      t.setAttribute("transform", "translate(12," + (box.t + box.b) / 2 + ") rotate(-90)");
    }
  }

  function newSvg(div, height) {
    var width = Math.max(260, div.clientWidth || 600);
    var svg = svgNode("svg", { class: "tm-chart", width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img" });
    div.appendChild(svg);
    return svg;
  }

  function toolbar(div, buttons) {
    var bar = document.createElement("div");
    bar.className = "tm-toolbar";
    buttons.forEach(function (b) {
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = b.text;
      if (b.pressed !== undefined) button.setAttribute("aria-pressed", String(b.pressed));
      button.addEventListener("click", function () { b.click(button); });
      bar.appendChild(button);
    });
    div.appendChild(bar);
    return bar;
  }

  // Drag across the plot to zoom the x range; the "Reset zoom" button (or a double click) undoes it.
  // Listening on the whole SVG lets a drag start on a bar or a mark as well as on empty plot.
  function brush(svg, box, x, onZoom) {
    var overlay = svgNode("rect", { x: box.l, y: box.t, width: box.r - box.l, height: box.b - box.t, class: "overlay" }, svg);
    var band = null, start = null;
    function at(event) { var r = svg.getBoundingClientRect(); return Math.min(box.r, Math.max(box.l, event.clientX - r.left)); }
    function inside(event) {
      var r = svg.getBoundingClientRect(), px = event.clientX - r.left, py = event.clientY - r.top;
      return px >= box.l && px <= box.r && py >= box.t && py <= box.b;
    }
    svg.addEventListener("mousedown", function (event) {
      if (!inside(event)) return;
      event.preventDefault();
      start = at(event);
      band = svgNode("rect", { x: start, y: box.t, width: 0, height: box.b - box.t, class: "band" }, svg);
    });
    svg.addEventListener("mousemove", function (event) {
      if (band) { var p = at(event); band.setAttribute("x", Math.min(p, start)); band.setAttribute("width", Math.abs(p - start)); }
    });
    svg.addEventListener("mouseup", function (event) {
      if (!band) return;
      var p = at(event);
      band.remove();
      band = null;
      if (Math.abs(p - start) > 6) onZoom(x.invert(Math.min(p, start)), x.invert(Math.max(p, start)));
    });
    svg.addEventListener("mouseleave", function () { if (band) { band.remove(); band = null; } });
    svg.addEventListener("dblclick", function (event) { if (inside(event)) onZoom(null, null); });
    return overlay;
  }

  function legend(div, names) {
    if (names.length < 2) return;
    var list = document.createElement("ul");
    list.className = "tm-legend";
    names.forEach(function (n) {
      var item = document.createElement("li");
      var swatch = document.createElement("span");
      swatch.className = "swatch" + (n.dash ? " dashed" : "");
      swatch.style.background = n.color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(n.name));
      list.appendChild(item);
    });
    div.appendChild(list);
  }

  // --- lines: one path per series, marker groups, optional log toggle ----------------------
  function drawLines(div, fig) {
    var state = { log: !!fig.log, x0: null, x1: null };
    var colors = fig.series.map(function (s, i) { return s.color || PALETTE[i % PALETTE.length]; });
    var buttons = [{ text: "Reset zoom", click: function () { state.x0 = state.x1 = null; render(); } }];
    if (fig.log_toggle) buttons.unshift({ text: "Log scale", pressed: state.log, click: function (b) {
      state.log = !state.log;
      b.setAttribute("aria-pressed", String(state.log));
      render();
    } });
    toolbar(div, buttons);
    var host = document.createElement("div");
    div.appendChild(host);
    legend(div, fig.series.map(function (s, i) { return { name: s.name, color: colors[i], dash: s.dash }; })
      .concat((fig.marks || []).map(function (m) { return { name: m.name, color: m.color }; })));

    function render() {
      host.textContent = "";
      var height = fig.height || 300, svg = newSvg(host, height);
      var width = +svg.getAttribute("width");
      var box = { l: MARGIN.left, r: width - MARGIN.right, t: MARGIN.top, b: height - MARGIN.bottom };
      var xs = [].concat.apply([], fig.series.map(function (s) { return s.x; }));
      var xr = extent(xs, false) || [0, 1];
      var x0 = state.x0 === null ? xr[0] : state.x0, x1 = state.x1 === null ? xr[1] : state.x1;
      var visible = [];
      fig.series.forEach(function (s) { s.x.forEach(function (v, i) { if (v >= x0 && v <= x1) visible.push(s.y[i]); }); });
      var yr = extent(visible, state.log) || (state.log ? [1, 10] : [0, 1]);
      var pad = state.log ? 1 : (yr[1] - yr[0]) * 0.05;
      var x = scale(x0, x1, box.l, box.r, false);
      var y = state.log ? scale(yr[0] / 1.3, yr[1] * 1.3, box.b, box.t, true) : scale(yr[0] - pad, yr[1] + pad, box.b, box.t, false);
      axes(svg, x, y, box, fig, { integerX: fig.integer_x });
      var plot = svgNode("g", { "clip-path": clipTo(svg, box) }, svg);
      fig.series.forEach(function (s, i) {
        var d = "", pen = false;
        s.x.forEach(function (xv, j) {
          var v = s.y[j];
          if (v === null || (state.log && v <= 0)) { pen = false; return; }
          d += (pen ? "L" : "M") + x(xv).toFixed(1) + " " + y(v).toFixed(1);
          pen = true;
        });
        svgNode("path", { d: d, class: "series", stroke: colors[i], "stroke-dasharray": s.dash ? "4 3" : "none" }, plot);
      });
      var marks = svgNode("g", { class: "marks" }, svg);
      (fig.marks || []).forEach(function (m) {
        m.x.forEach(function (xv, j) {
          if (xv < x0 || xv > x1) return;
          var yv = m.y ? m.y[j] : null;
          var py = yv === null || (state.log && yv <= 0) ? box.t + 6 : y(yv), px = x(xv);
          var shape = m.symbol === "x"
            ? svgNode("path", { d: "M" + (px - 5) + " " + (py - 5) + "l10 10m0 -10l-10 10", stroke: m.color, class: "mark" }, marks)
            : svgNode("circle", { cx: px, cy: py, r: 6, stroke: m.color, class: "mark open" }, marks);
          shape.addEventListener("mousemove", function (event) { showTip(event, [m.text[j]]); });
          shape.addEventListener("mouseleave", hideTip);
        });
      });
      var overlay = brush(svg, box, x, function (a, b) { state.x0 = a; state.x1 = b; render(); });
      svg.insertBefore(overlay, marks);
      overlay.addEventListener("mousemove", function (event) {
        var at = x.invert(event.clientX - svg.getBoundingClientRect().left);
        var lines = [];
        fig.series.forEach(function (s) {
          var j = nearest(s.x, at);
          if (j < 0) return;
          if (!lines.length) lines.push((fig.x_title || "x") + " " + fmt(s.x[j]));
          lines.push((s.name || fig.y_title) + ": " + fmt(s.y[j]));
        });
        if (lines.length) showTip(event, lines);
      });
      overlay.addEventListener("mouseleave", hideTip);
    }
    render();
    return render;
  }
  function nearest(xs, at) {
    var lo = 0, hi = xs.length - 1;
    if (hi < 0) return -1;
    while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (xs[mid] < at) lo = mid; else hi = mid; }
    return Math.abs(xs[lo] - at) <= Math.abs(xs[hi] - at) ? lo : hi;
  }

  // --- bars: vertical stacked (categories along x) or horizontal (categories down y) -------
  function drawBars(div, fig) {
    var colors = fig.series.map(function (s, i) { return s.color || PALETTE[i % PALETTE.length]; });
    var host = document.createElement("div");
    div.appendChild(host);
    legend(div, fig.series.map(function (s, i) { return { name: s.name, color: colors[i] }; }));
    function render() {
      host.textContent = "";
      var n = fig.categories.length, horizontal = !!fig.horizontal;
      var height = fig.height || (horizontal ? Math.max(200, 40 + 24 * n) : 300);
      var svg = newSvg(host, height), width = +svg.getAttribute("width");
      var longest = Math.max.apply(null, fig.categories.map(function (c) { return c.length; }).concat([4]));
      var chars = Math.min(longest, Math.floor(width * 0.4 / 6.5));
      var left = horizontal ? 12 + chars * 6.5 : MARGIN.left;
      var box = { l: left, r: width - MARGIN.right, t: MARGIN.top, b: height - MARGIN.bottom };
      var totals = fig.categories.map(function (_, i) {
        return fig.series.reduce(function (sum, s) { return sum + (s.values[i] || 0); }, 0);
      });
      var v = scale(0, Math.max.apply(null, totals.concat([1e-12])) * 1.05, horizontal ? box.l : box.b, horizontal ? box.r : box.t, false);
      var band = ((horizontal ? box.b - box.t : box.r - box.l) / Math.max(1, n));
      var grid = svgNode("g", { class: "grid" }, svg);
      var vt = svgNode("g", { class: horizontal ? "xtick" : "ytick" }, svg), ct = svgNode("g", { class: horizontal ? "ytick" : "xtick" }, svg);
      v.ticks(horizontal ? Math.max(2, Math.floor((box.r - box.l) / 80)) : 6, false).forEach(function (t) {
        if (horizontal) { svgNode("line", { x1: v(t), x2: v(t), y1: box.t, y2: box.b }, grid); label(vt, v(t), box.b + 16, fmt(t), "tick"); }
        else { svgNode("line", { x1: box.l, x2: box.r, y1: v(t), y2: v(t) }, grid); label(vt, box.l - 6, v(t) + 4, fmt(t), "tick", "end"); }
      });
      var every = horizontal ? 1 : Math.max(1, Math.ceil(n * 40 / (box.r - box.l)));
      fig.categories.forEach(function (c, i) {
        var mid = (horizontal ? box.t : box.l) + band * (i + 0.5);
        if (i % every) return;
        var group = titled(ct, (fig.full || fig.categories)[i]);
        if (horizontal) label(group, box.l - 6, mid + 4, fit(c, chars), "tick", "end");
        else label(group, mid, box.b + 16, fit(c, 12), "tick");
      });
      svgNode("rect", { x: box.l, y: box.t, width: box.r - box.l, height: box.b - box.t, class: "frame" }, svg);
      if (fig.value_title) label(svg, horizontal ? (box.l + box.r) / 2 : 0, horizontal ? box.b + 36 : 0, fig.value_title, "axis-title")
        .setAttribute("transform", horizontal ? "" : "translate(12," + (box.t + box.b) / 2 + ") rotate(-90)");
      if (fig.category_title && !horizontal) label(svg, (box.l + box.r) / 2, box.b + 36, fig.category_title, "axis-title");
      var bars = svgNode("g", { class: "bars" }, svg);
      fig.categories.forEach(function (c, i) {
        var base = 0;
        fig.series.forEach(function (s, k) {
          var value = s.values[i];
          if (!value) return;
          var a = v(base), b = v(base + value), thick = Math.max(1, band * 0.7), off = band * 0.15;
          var rect = horizontal
            ? svgNode("rect", { x: a, y: box.t + band * i + off, width: Math.max(1, b - a), height: thick, fill: colors[k] }, bars)
            : svgNode("rect", { x: box.l + band * i + off, y: b, width: thick, height: Math.max(1, a - b), fill: colors[k] }, bars);
          base += value;
          var lines = [(fig.full || fig.categories)[i]].concat([(s.name ? s.name + ": " : "") + fmt(value) + (fig.unit ? " " + fig.unit : "")]);
          rect.addEventListener("mousemove", function (event) { showTip(event, lines); });
          rect.addEventListener("mouseleave", hideTip);
        });
      });
    }
    render();
    return render;
  }

  // --- heatmap: one byte per cell (see charts.py), painted on a canvas ---------------------
  var VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function viridis(u) {
    var p = Math.min(0.9999, Math.max(0, u)) * (VIRIDIS.length - 1), i = Math.floor(p), f = p - i;
    return VIRIDIS[i].map(function (c, k) { return Math.round(c + (VIRIDIS[i + 1][k] - c) * f); });
  }
  function decodeHeatmap(fig) {
    var raw = atob(fig.bytes), cells = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) cells[i] = raw.charCodeAt(i);
    return cells;
  }
  function drawHeatmap(div, fig) {
    // Gradient norms are on a log colour scale; `scale: "linear"` (rank × step heatmaps) colours
    // zmin..zmax evenly and names the value `value_name` in `unit`.
    var L = fig.levels, cols = fig.x.length, rows = fig.y.length, cells = decodeHeatmap(fig);
    var linear = fig.scale === "linear", unit = fig.unit || "";
    div.setAttribute("data-grid", rows + "x" + cols);
    var lut = new Array(256);
    for (var level = 0; level < 256; level++) {
      if (level === L[0]) lut[level] = [0, 0, 0, 0];
      else if (level === L[1]) lut[level] = [40, 40, 48, 255];
      else if (level === L[4]) lut[level] = [198, 40, 40, 255];
      else lut[level] = viridis((level - L[2]) / (L[3] - L[2])).concat([255]);
    }
    var image = document.createElement("canvas");
    image.width = cols;
    image.height = rows;
    var ctx = image.getContext("2d"), pixels = ctx.createImageData(cols, rows);
    for (var c = 0; c < cells.length; c++) pixels.data.set(lut[cells[c]], c * 4);
    ctx.putImageData(pixels, 0, 0);
    var bad = {};
    (fig.bad_rows || []).forEach(function (r) { bad[r] = true; });
    var host = document.createElement("div");
    host.className = "tm-heat";
    div.appendChild(host);

    function render() {
      host.textContent = "";
      var labels = rows <= 60;
      var width = Math.max(260, div.clientWidth || 600);
      var longest = Math.max.apply(null, fig.y.map(function (n) { return n.length; }).concat([4]));
      var chars = Math.min(longest, Math.floor(width * 0.35 / 6.5));
      var left = labels ? 18 + chars * 6.5 : 24, right = linear ? 40 + 6.5 * (6 + unit.length) : 70;
      var height = fig.height || Math.min(900, Math.max(260, 60 + 14 * rows));
      var box = { l: left, r: width - right, t: MARGIN.top, b: height - MARGIN.bottom };
      var canvas = document.createElement("canvas");
      var ratio = window.devicePixelRatio || 1;
      canvas.width = Math.round((box.r - box.l) * ratio);
      canvas.height = Math.round((box.b - box.t) * ratio);
      canvas.style.cssText = "position:absolute;left:" + box.l + "px;top:" + box.t + "px;width:" + (box.r - box.l) + "px;height:" + (box.b - box.t) + "px";
      var g = canvas.getContext("2d");
      g.imageSmoothingEnabled = false;
      g.drawImage(image, 0, 0, canvas.width, canvas.height);
      host.style.height = height + "px";
      host.appendChild(canvas);
      var svg = newSvg(host, height);
      var x = scale(fig.x[0], fig.x[cols - 1] + fig.width, box.l, box.r, false), rowH = (box.b - box.t) / rows;
      var xt = svgNode("g", { class: "xtick" }, svg), yt = svgNode("g", { class: "ytick" }, svg);
      x.ticks(Math.max(2, Math.floor((box.r - box.l) / 80)), true).forEach(function (t) { label(xt, x(t), box.b + 16, fmt(t), "tick"); });
      label(svg, (box.l + box.r) / 2, box.b + 36, fig.x_title || "step", "axis-title");
      var flags = svgNode("g", { class: "bad-rows" }, svg);
      fig.y.forEach(function (name, r) {
        var mid = box.t + rowH * (r + 0.5);
        if (bad[r]) {
          var flag = svgNode("rect", { x: box.l - (labels ? chars * 6.5 + 16 : 20), y: box.t + rowH * r, width: 6, height: Math.max(2, rowH - 1), fill: BAD }, flags);
          svgNode("title", {}, flag).textContent = name + ": " + (fig.flag_text || "NaN/Inf gradient");
        }
        if (labels) label(titled(yt, name), box.l - 6, mid + 4, fit(name, chars), "tick", "end");
      });
      svgNode("rect", { x: box.l, y: box.t, width: box.r - box.l, height: box.b - box.t, class: "frame" }, svg);
      // colour bar: decades only, at most 6 labels
      var cb = { l: box.r + 12, r: box.r + 24 }, z = scale(fig.zmin, fig.zmax, box.b, box.t, false);
      for (var k = 0; k < 32; k++) {
        var rgb = viridis(k / 31);
        svgNode("rect", { x: cb.l, y: box.t + (box.b - box.t) * (31 - k) / 32, width: 12, height: (box.b - box.t) / 32 + 0.5, fill: "rgb(" + rgb.join(",") + ")" }, svg);
      }
      if (linear) {
        z.ticks(5, false).forEach(function (t) { label(svg, cb.r + 4, z(t) + 4, fmt(t) + unit, "tick", "start"); });
      } else {
        var decades = [];
        for (var d = Math.ceil(fig.zmin); d <= Math.floor(fig.zmax); d++) decades.push(d);
        var stride = Math.max(1, Math.ceil(decades.length / 6));
        decades.forEach(function (dv, i) { if (i % stride === 0) label(svg, cb.r + 4, z(dv) + 4, "1e" + dv, "tick", "start"); });
      }
      var overlay = svgNode("rect", { x: box.l, y: box.t, width: box.r - box.l, height: box.b - box.t, class: "overlay" }, svg);
      overlay.addEventListener("mousemove", function (event) {
        var rect = svg.getBoundingClientRect();
        var c = Math.min(cols - 1, Math.floor((event.clientX - rect.left - box.l) / (box.r - box.l) * cols));
        var r = Math.min(rows - 1, Math.floor((event.clientY - rect.top - box.t) / rowH));
        if (c < 0 || r < 0) return;
        var lv = cells[r * cols + c], value;
        var z0 = fig.zmin + (lv - L[2]) * (fig.zmax - fig.zmin) / (L[3] - L[2]);
        if (lv === L[0]) value = "no data";
        else if (lv === L[1]) value = "gradient exactly zero";
        else if (lv === L[4]) value = "NaN/Inf gradient";
        else if (linear) value = fig.value_name + " ≈ " + fmt(z0) + unit;
        else value = "grad norm ≈ " + fmt(Math.pow(10, z0));
        var span = fig.width > 1 ? "steps " + fig.x[c] + "–" + (fig.x[c] + fig.width - 1) : "step " + fig.x[c];
        showTip(event, [fig.y[r], span + ": " + value]);
      });
      overlay.addEventListener("mouseleave", hideTip);
    }
    render();
    return render;
  }

  // --- timeline: lanes (CPU threads, GPU streams) of events, nested calls stacked, zoomable --
  var MAX_DEPTH = 8, ROW = 14;
  function nest(fig) {
    // Sub-row of each event inside its lane: how many earlier events of the lane still enclose it.
    var depth = new Array(fig.events.length), rows = fig.lanes.map(function () { return 1; }), open = {};
    fig.events.map(function (_, i) { return i; }).sort(function (a, b) {
      var p = fig.events[a], q = fig.events[b];
      return p[0] - q[0] || p[1] - q[1] || q[2] - p[2];
    }).forEach(function (i) {
      var e = fig.events[i], stack = open[e[0]] || (open[e[0]] = []);
      while (stack.length && stack[stack.length - 1] <= e[1]) stack.pop();
      depth[i] = Math.min(stack.length, MAX_DEPTH - 1);
      stack.push(e[1] + e[2]);
      rows[e[0]] = Math.max(rows[e[0]], depth[i] + 1);
    });
    var tops = [], y = 0;
    rows.forEach(function (n) { tops.push(y); y += n * ROW + 6; });
    return { depth: depth, rows: rows, tops: tops, height: y };
  }
  function drawTimeline(div, fig) {
    var state = { x0: null, x1: null }, layout = nest(fig);
    toolbar(div, [{ text: "Reset zoom", click: function () { state.x0 = state.x1 = null; render(); } }]);
    var host = document.createElement("div");
    div.appendChild(host);
    function render() {
      host.textContent = "";
      var height = MARGIN.top + layout.height + MARGIN.bottom;
      var svg = newSvg(host, height), width = +svg.getAttribute("width");
      var chars = Math.min(Math.max.apply(null, fig.lanes.map(function (n) { return n.length; })), Math.floor(width * 0.3 / 6.5));
      var box = { l: 12 + chars * 6.5, r: width - MARGIN.right, t: MARGIN.top, b: height - MARGIN.bottom };
      var x0 = state.x0 === null ? 0 : state.x0, x1 = state.x1 === null ? fig.span_ms : state.x1;
      var x = scale(x0, x1, box.l, box.r, false);
      var grid = svgNode("g", { class: "grid" }, svg), xt = svgNode("g", { class: "xtick" }, svg), yt = svgNode("g", { class: "ytick" }, svg);
      x.ticks(Math.max(2, Math.floor((box.r - box.l) / 80)), false).forEach(function (t) {
        svgNode("line", { x1: x(t), x2: x(t), y1: box.t, y2: box.b }, grid);
        label(xt, x(t), box.b + 16, fmt(t), "tick");
      });
      label(svg, (box.l + box.r) / 2, box.b + 36, "ms from the start of step " + fig.step, "axis-title");
      fig.lanes.forEach(function (name, i) {
        var top = box.t + layout.tops[i];
        label(titled(yt, name), box.l - 6, top + ROW - 3, fit(name, chars), "tick", "end");
        if (i) svgNode("line", { x1: box.l, x2: box.r, y1: top - 3, y2: top - 3 }, grid);
      });
      svgNode("rect", { x: box.l, y: box.t, width: box.r - box.l, height: box.b - box.t, class: "frame" }, svg);
      var overlay = brush(svg, box, x, function (a, b) { state.x0 = a; state.x1 = b; render(); });
      var bars = svgNode("g", { class: "events", "clip-path": clipTo(svg, box) }, svg);
      fig.events.forEach(function (e, i) {
        var lane = e[0], start = e[1], dur = e[2], name = fig.names[e[3]];
        if (start + dur < x0 || start > x1) return;
        var rect = svgNode("rect", {
          x: x(start), y: box.t + layout.tops[lane] + layout.depth[i] * ROW, width: Math.max(1, x(start + dur) - x(start)),
          height: ROW - 2, fill: PALETTE[e[3] % PALETTE.length],
        }, bars);
        rect.addEventListener("mousemove", function (event) {
          showTip(event, [name, fmt(dur) + " ms, from " + fmt(start) + " ms", fig.lanes[lane]]);
        });
        rect.addEventListener("mouseleave", hideTip);
      });
      svg.insertBefore(overlay, bars);
    }
    render();
    return render;
  }

  function drawPanels(div, fig) {
    div.classList.add("tm-panels");
    var renders = fig.panels.map(function (panel) {
      var child = document.createElement("div");
      child.className = "tm-panel";
      div.appendChild(child);
      return DRAW[panel.kind](child, panel);
    });
    return function () { renders.forEach(function (r) { r(); }); };
  }

  var DRAW = { line: drawLines, bars: drawBars, heatmap: drawHeatmap, timeline: drawTimeline, panels: drawPanels };
  var redraws = [];
  document.querySelectorAll("div[data-figure]").forEach(function (div) {
    var fig = figures[div.getAttribute("data-figure")];
    if (fig && DRAW[fig.kind]) redraws.push(DRAW[fig.kind](div, fig));
  });
  // Redraw at the new width when the window is resized (phones turned sideways, print).
  var pending = null, lastWidth = window.innerWidth;
  window.addEventListener("resize", function () {
    if (window.innerWidth === lastWidth) return;
    lastWidth = window.innerWidth;
    clearTimeout(pending);
    pending = setTimeout(function () { redraws.forEach(function (r) { r(); }); }, 150);
  });
  performance.mark("tracemortem:draw-end");
})();
