// alphaspec report: sorting and filtering of the matrix tables, and each matrix's spectrum drawn as SVG.
// No network, no libraries: the data are in the page (script type="application/json").
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";

  function svgEl(name, attrs) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  // --- sorting: click (or Enter on) a column header; numbers by value, text by text --------------------------
  function sortBy(table, col, th) {
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    const key = (row) => row.cells[col].dataset.v;
    const numeric = rows.every((r) => key(r) === "" || !isNaN(Number(key(r))));
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === "" || y === "") return (x === "") - (y === "");  // empty cells last
      const c = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return ascending ? c : -c;
    });
    table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.forEach((r) => body.appendChild(r));
  }

  // --- filtering: module type, stack, status, warning, layer, name --------------------------------------------
  function applyFilters(section) {
    const value = (key) => {
      const el = section.querySelector(`[data-filter="${key}"]`);
      return el ? el.value.trim() : "";
    };
    const f = {module: value("module"), stack: value("stack"), status: value("status"), warning: value("warning"),
               layer: value("layer"), name: value("name").toLowerCase()};
    let shown = 0, total = 0;
    section.querySelectorAll("table.matrices tbody tr").forEach((row) => {
      const d = row.dataset;
      const warnings = d.warning ? d.warning.split(",") : [];
      const ok = (!f.module || d.module === f.module) && (!f.stack || d.stack === f.stack) &&
        (!f.status || d.status === f.status) && (!f.layer || d.layer === f.layer) &&
        (!f.name || row.cells[0].textContent.toLowerCase().includes(f.name)) &&
        (!f.warning || (f.warning === "any" ? warnings.length > 0 : f.warning === "none" ? warnings.length === 0
                                                                                       : warnings.includes(f.warning)));
      row.hidden = !ok;
      total += 1;
      shown += ok ? 1 : 0;
    });
    const counter = section.querySelector(".shown");
    if (counter) counter.textContent = `${shown} of ${total} matrices`;
  }

  // --- one matrix's spectrum: log-log density with its power-law fit from xmin ------------------------------
  function drawEsd(panel, esd) {
    const W = 640, H = 360, L = 64, R = 16, T = 34, B = 44;
    const xs = esd.x, ys = esd.y;
    let fitX = [], fitY = [];
    if (esd.alpha !== undefined) {
      const x0 = Math.log10(esd.xmin), x1 = xs[xs.length - 1];
      for (let k = 0; k <= 20; k++) {
        const lx = x0 + (x1 - x0) * k / 20;
        // density of the fitted law: frac·(α−1)/xmin·(λ/xmin)^−α
        fitX.push(lx);
        fitY.push(Math.log10(esd.frac * (esd.alpha - 1) / esd.xmin) - esd.alpha * (lx - x0));
      }
    }
    const allX = xs.concat(fitX), allY = ys.concat(fitY);
    const xlo = Math.min(...allX), xhi = Math.max(...allX), ylo = Math.min(...allY), yhi = Math.max(...allY);
    const sx = (x) => L + (x - xlo) / ((xhi - xlo) || 1) * (W - L - R);
    const sy = (y) => H - B - (y - ylo) / ((yhi - ylo) || 1) * (H - T - B);
    const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", class: "esd-plot",
                              "aria-label": `spectrum of ${esd.name} with its power-law fit`});
    const title = svgEl("text", {x: L, y: 20, class: "esd-title"});
    title.textContent = esd.alpha !== undefined ? `${esd.name}: alpha = ${esd.alpha.toFixed(3)}` : esd.name;
    svg.appendChild(title);
    svg.appendChild(svgEl("rect", {x: L, y: T, width: W - L - R, height: H - T - B, class: "frame"}));
    for (let e = Math.ceil(xlo); e <= Math.floor(xhi); e++) {  // decades on both axes
      const t = svgEl("text", {x: sx(e), y: H - B + 16, class: "tick", "text-anchor": "middle"});
      t.textContent = `1e${e}`;
      svg.appendChild(t);
    }
    for (let e = Math.ceil(ylo); e <= Math.floor(yhi); e++) {
      const t = svgEl("text", {x: L - 6, y: sy(e) + 4, class: "tick", "text-anchor": "end"});
      t.textContent = `1e${e}`;
      svg.appendChild(t);
    }
    const path = (px, py) => px.map((x, k) => `${k ? "L" : "M"}${sx(x).toFixed(1)},${sy(py[k]).toFixed(1)}`).join("");
    svg.appendChild(svgEl("path", {d: path(xs, ys), class: "density"}));
    if (fitX.length) {
      svg.appendChild(svgEl("path", {d: path(fitX, fitY), class: "fit"}));
      svg.appendChild(svgEl("line", {x1: sx(Math.log10(esd.xmin)), x2: sx(Math.log10(esd.xmin)), y1: T, y2: H - B,
                                     class: "xmin"}));
    }
    const xl = svgEl("text", {x: (L + W - R) / 2, y: H - 6, class: "label", "text-anchor": "middle"});
    xl.textContent = "eigenvalue λ of WᵀW (log scale); dashed: xmin, orange: the fitted power law";
    svg.appendChild(xl);
    panel.replaceChildren(svg);
    panel.hidden = false;
  }

  // any other table marked sortable (the summary of many sources): sorting alone
  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("th").forEach((th) => {
      const col = Number(th.dataset.col);
      th.addEventListener("click", () => sortBy(table, col, th));
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortBy(table, col, th); });
    });
  });

  document.querySelectorAll("section.checkpoint").forEach((section) => {
    const table = section.querySelector("table.matrices");
    const script = section.querySelector("script.report-data");
    const data = script ? JSON.parse(script.textContent) : {esd: {}};
    const panel = section.querySelector("div.esd");
    if (!table) return;
    table.querySelectorAll("th").forEach((th) => {
      const col = Number(th.dataset.col);
      th.addEventListener("click", () => sortBy(table, col, th));
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortBy(table, col, th); });
    });
    section.querySelectorAll("[data-filter]").forEach((el) => {
      el.addEventListener("input", () => applyFilters(section));
      el.addEventListener("change", () => applyFilters(section));
    });
    table.querySelectorAll("tbody tr.has-esd").forEach((row) => {
      const open = () => {
        table.querySelectorAll("tr.selected").forEach((r) => r.classList.remove("selected"));
        row.classList.add("selected");
        drawEsd(panel, data.esd[row.dataset.i]);
      };
      row.addEventListener("click", open);
      row.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    });
    applyFilters(section);
  });
})();
