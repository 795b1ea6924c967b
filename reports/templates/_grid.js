/* Client-side sort of all rows of this task by a per-item metric, with paging. No network: the rows come from
   a local script file (GRID.data) loaded on first use. State lives in the URL hash: #sort=psnr_gt|0&dir=worst&page=2 */
(function () {
  "use strict";
  var keySel = document.getElementById("sort-key"), dirSel = document.getElementById("sort-dir");
  var body = document.getElementById("grid-body"), status = document.getElementById("sort-status");
  var pagers = [document.getElementById("pager-top"), document.getElementById("pager-bottom")];
  var staticBody = body.innerHTML, staticPagers = pagers.map(function (p) { return p.innerHTML; });
  var rows = null;
  var banner = document.getElementById("filled-banner");
  function fitHeader() {  // sticky column headers sit below the sticky banner, whatever its height
    if (banner) document.documentElement.style.setProperty("--banner-h", banner.offsetHeight + "px");
  }
  fitHeader();
  window.addEventListener("resize", fitHeader);

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function metricText(name, v) {
    var m = GRID.metrics[name] || {label: name, decimals: 3};
    var text = v.toFixed(m.decimals);
    if (v !== 0 && Number(text) === 0) {  // as the tables: never show a non-zero as 0 (2 significant digits)
      text = v.toFixed(Math.min(12, Math.max(m.decimals, 1 - Math.floor(Math.log10(Math.abs(v))))));
    }
    return m.label + " " + text;
  }
  function cellNode(c, i) {
    var cls = (i < GRID.nFixed ? "input" : "") + (i === GRID.nFixed ? " sepcol" : "");
    var td = el("td", cls);
    if (c.t) {
      var a = el("a", "thumb"); a.href = c.f;
      var img = el("img"); img.loading = "lazy"; img.decoding = "async"; img.src = c.t; img.alt = c.a || "";
      img.width = GRID.thumbSize; img.height = GRID.thumbSize;
      a.appendChild(img); td.appendChild(a);
    } else if (c.k === "t") {
      var prompt = el("div", "prompt", "\u201c" + (c.x || "") + "\u201d"); prompt.title = c.x || ""; td.appendChild(prompt);
    } else if (c.k === "f") {
      td.className = "failed " + cls;
      var err = el("div", "err", "failed: " + (c.e || "")); err.title = c.e || ""; td.appendChild(err);
    } else {
      td.appendChild(el("div", "none", c.e || (c.k === "m" ? "no output" : "")));
    }
    if (c.c) { var cap = el("div", "cap", c.c); cap.title = c.c; td.appendChild(cap); }
    if (c.m) {
      var box = el("div", "m");
      Object.keys(c.m).forEach(function (k) { box.appendChild(el("span", "", metricText(k, c.m[k]))); });
      td.appendChild(box);
    }
    return td;
  }
  function rowNode(r) {
    var tr = el("tr"), head = el("td", "rowhead");
    head.appendChild(el("b", "", r.id)); head.appendChild(el("br")); head.appendChild(el("span", "muted", "#" + r.n));
    tr.appendChild(head);
    r.c.forEach(function (c, i) { tr.appendChild(cellNode(c, i)); });
    return tr;
  }
  function parseHash() {
    var out = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1));
    });
    return out;
  }
  function hashFor(key, dir, page) {
    return "#sort=" + encodeURIComponent(key) + "&dir=" + dir + "&page=" + page;
  }
  function renderPager(key, dir, page, total) {
    pagers.forEach(function (p) {
      p.textContent = "";
      var box = el("span", "pager");
      function link(text, target) {
        if (target === null) { box.appendChild(el("span", text === String(page) ? "current" : "", text)); return; }
        var a = el("a", "", text); a.href = hashFor(key, dir, target); box.appendChild(a);
      }
      if (page > 1) link("\u2039 prev", page - 1);
      var last = 0;
      for (var q = 1; q <= total; q++) {
        if (q !== 1 && q !== total && Math.abs(q - page) > 3) continue;
        if (q - last > 1) link("\u2026", null);
        link(String(q), q === page ? null : q);
        last = q;
      }
      if (page < total) link("next \u203a", page + 1);
      p.appendChild(box);
    });
  }
  function show() {
    var h = parseHash();
    if (!h.sort) {
      body.innerHTML = staticBody;
      pagers.forEach(function (p, i) { p.innerHTML = staticPagers[i]; });
      keySel.value = ""; status.textContent = "";
      return;
    }
    if (rows === null) { load(show); return; }
    var parts = h.sort.split("|"), metric = parts[0], col = GRID.nFixed + parseInt(parts[1], 10);
    var dir = h.dir === "best" ? "best" : "worst";
    keySel.value = h.sort; dirSel.value = dir;
    var info = GRID.metrics[metric] || {higher: true};
    var sign = (info.higher ? 1 : -1) * (dir === "best" ? -1 : 1);  // ascending value * sign
    // failed items are the worst: first when sorting worst first, last otherwise; items without the metric last
    var rank = function (c) {
      if (c && c.k === "f") return dir === "worst" ? 0 : 2;
      return c && c.m && metric in c.m ? 1 : 3;
    };
    var sorted = rows.slice().sort(function (a, b) {
      var ca = a.c[col], cb = b.c[col];
      var ka = rank(ca), kb = rank(cb);
      if (ka !== kb) return ka - kb;
      if (ka !== 1) return a.n - b.n;
      return (ca.m[metric] - cb.m[metric]) * sign || a.n - b.n;
    });
    var total = Math.max(1, Math.ceil(sorted.length / GRID.pageSize));
    var page = Math.min(Math.max(1, parseInt(h.page, 10) || 1), total);
    body.textContent = "";
    sorted.slice((page - 1) * GRID.pageSize, page * GRID.pageSize).forEach(function (r) { body.appendChild(rowNode(r)); });
    renderPager(h.sort, dir, page, total);
    status.textContent = "sorted over all " + sorted.length + " triplets of this task";
  }
  function load(done) {
    status.textContent = "loading\u2026";
    var s = document.createElement("script");
    s.src = GRID.data;
    s.onload = function () { rows = (window.GRID_DATA || {})[GRID.task].rows; done(); };
    s.onerror = function () { status.textContent = "could not load " + GRID.data; };
    document.head.appendChild(s);
  }
  function change() {
    if (!keySel.value) { location.hash = ""; return; }
    location.hash = hashFor(keySel.value, dirSel.value, 1);
  }
  keySel.addEventListener("change", change);
  dirSel.addEventListener("change", change);
  window.addEventListener("hashchange", show);
  if (location.hash) show();
})();
