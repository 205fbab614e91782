/* Small SVG line charts for the console, drawn with DOM calls (no library, no inline style). */
"use strict";
window.Spark = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 120, H = 28, PAD = 2;

  /* values: numbers or null (nothing measured); label: what the chart says to a screen reader. */
  function line(values, label) {
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    const known = values.filter((v) => v !== null && Number.isFinite(v));
    const max = Math.max(...known, 0) || 1;
    const step = values.length > 1 ? (W - 2 * PAD) / (values.length - 1) : 0;
    let run = [];
    const flush = () => {
      if (run.length > 0) {
        const poly = document.createElementNS(NS, "polyline");
        // A lone point (measured once between gaps) is drawn as a short tick.
        const points = run.length === 1
          ? [[run[0][0] - 1.5, run[0][1]], [run[0][0] + 1.5, run[0][1]]] : run;
        poly.setAttribute("points", points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
        svg.appendChild(poly);
      }
      run = [];
    };
    values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) { flush(); return; }
      const x = PAD + i * step, y = H - PAD - (v / max) * (H - 2 * PAD);
      run.push([x, y]);
    });
    flush();
    return svg;
  }

  return { line };
})();
