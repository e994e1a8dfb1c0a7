// A line chart of accuracy per epoch, drawn as SVG (no chart library).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

// history: [{epoch, acc, val_acc, ...}]; epochs: the planned number (the x axis reaches it).
function drawAccuracyChart(svg, history, epochs) {
  svg.replaceChildren();
  const width = 520, height = 240, left = 40, right = 110, top = 12, bottom = 30;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const lastEpoch = Math.max(2, epochs || 0, history.length);
  const x = (epoch) => left + ((epoch - 1) / (lastEpoch - 1)) * plotWidth;
  const y = (value) => top + (1 - value) * plotHeight;

  for (const value of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(svgElement("line", {class: "grid", x1: left, x2: left + plotWidth, y1: y(value), y2: y(value)}));
    svg.append(svgElement("text", {x: left - 6, y: y(value) + 4, "text-anchor": "end"}, value.toFixed(2)));
  }
  svg.append(svgElement("line", {class: "axis", x1: left, x2: left + plotWidth, y1: y(0), y2: y(0)}));
  const step = Math.max(1, Math.ceil(lastEpoch / 10));
  for (let epoch = 1; epoch <= lastEpoch; epoch += step) {
    svg.append(svgElement("text", {x: x(epoch), y: height - 12, "text-anchor": "middle"}, String(epoch)));
  }
  svg.append(svgElement("text", {x: left + plotWidth / 2, y: height - 1, "text-anchor": "middle"}, "epoch"));

  const series = [["acc", "accuracy (training)"], ["val_acc", "accuracy (validation)"]];
  series.forEach(([key, label], index) => {
    const points = history.filter((row) => row[key] !== null && row[key] !== undefined);
    if (points.length > 1) {
      svg.append(svgElement("polyline", {
        class: key, points: points.map((row) => `${x(row.epoch)},${y(row[key])}`).join(" ")}));
    }
    for (const row of points) {
      const dot = svgElement("circle", {class: `${key} point`, cx: x(row.epoch), cy: y(row[key]), r: 3.5});
      dot.append(svgElement("title", {}, `epoch ${row.epoch}: ${label} ${row[key].toFixed(3)}`));
      svg.append(dot);
    }
    const legendY = top + 14 + index * 18;
    svg.append(svgElement("line", {class: key, x1: left + plotWidth + 10, x2: left + plotWidth + 28,
                                   y1: legendY - 4, y2: legendY - 4}));
    svg.append(svgElement("text", {x: left + plotWidth + 32, y: legendY}, key === "acc" ? "training" : "validation"));
  });
}
