"use strict";
// Data is only ever written with textContent or as SVG attributes: never parsed as markup.
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

async function getJson(path) {
  const answer = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error || answer.statusText);
  return body;
}

function kpi(id, label, value, bad) {
  let box = $(id);
  if (!box) {
    box = el("div", undefined, "kpi");
    const n = el("div", undefined, "n"); n.id = id;
    box.append(n, el("div", label, "l"));
    $("kpis").append(box);
    box = n;
  }
  box.textContent = String(value);
  box.parentElement.classList.toggle("bad", Boolean(bad));
}

async function refreshSummary() {
  try {
    const summary = await getJson("/api/summary");
    for (const [state, count] of Object.entries(summary.workflows)) kpi("kpi-" + state, state, count);
    for (const [stage, n] of Object.entries(summary.stages)) {
      kpi("waiting-" + stage, stage + " waiting", n.waiting);
      kpi("stuck-" + stage, stage + " past SLA", n.stuck, n.stuck > 0);
    }
    $("caught-up").textContent = summary.caught_up ? "" : "(still reading the streams)";
  } catch (error) {
    $("caught-up").textContent = "(summary unavailable: " + error.message + ")";
  }
}

let selected = null;
async function search() {
  const q = $("search").value.trim().slice(0, 64);
  try {
    const found = await getJson("/api/workflows?limit=50&q=" + encodeURIComponent(q));
    const list = $("workflows");
    list.replaceChildren();
    for (const row of found.workflows) {
      const button = el("button");
      button.dataset.key = row.key;
      button.append(el("span", row.key), el("span", row.state, "tag"));
      if (row.stuck) button.append(el("span", "past SLA", "tag stuck"));
      if (row.key === selected) button.classList.add("selected");
      button.addEventListener("click", () => show(row.key));
      const item = el("li"); item.append(button); list.append(item);
    }
    $("more").textContent = found.more ? "more match: type more of the id" : "";
  } catch (error) {
    $("more").textContent = error.message;
  }
}

function seconds(value) {
  return value === null ? "" : value.toFixed(3) + " s";
}

function drawTimeline(stages) {
  const chart = $("timeline");
  chart.replaceChildren();
  const width = Math.max(chart.getBoundingClientRect().width || 0, 480);
  const left = 220, right = 30, top = 20, row = 28;
  const height = top + row * stages.length + 34;
  chart.setAttribute("height", height);
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  if (!stages.length) return;
  const first = stages[0].when_ms, last = stages[stages.length - 1].when_ms;
  const span = Math.max(last - first, 1);
  const x = (ms) => left + ((ms - first) / span) * (width - left - right);
  const axisY = top + row * stages.length + 6;
  chart.append(svg("line", { class: "axis", x1: left, y1: axisY, x2: width - right, y2: axisY }));
  for (let tick = 0; tick <= 4; tick++) {
    const ms = first + (span * tick) / 4;
    chart.append(svg("line", { class: "grid", x1: x(ms), y1: top - 8, x2: x(ms), y2: axisY }));
    const offset = ms - first;
    const label = span < 2000 ? "+" + Math.round(offset) + " ms"
      : span < 120000 ? "+" + (offset / 1000).toFixed(1) + " s" : new Date(ms).toLocaleTimeString();
    chart.append(svg("text", { x: x(ms), y: axisY + 18, "text-anchor": "middle" }, label));
  }
  let previous = null;
  stages.forEach((stage, i) => {
    const y = top + row * i + 4;
    chart.append(svg("text", { x: 8, y: y + 4, class: "stage-label" }, stage.event === stage.stage ? stage.stage : stage.stage + " · " + stage.event));
    const cx = x(stage.when_ms);
    if (previous) chart.append(svg("line", { class: "link", x1: previous[0], y1: previous[1], x2: cx, y2: y }));
    const dot = svg("circle", { cx, cy: y, r: 6 });
    dot.append(svg("title", {}, stage.stage + " at " + stage.when + (stage.trace_id ? " · trace " + stage.trace_id : "")));
    chart.append(dot);
    previous = [cx, y];
  });
}

async function show(key) {
  selected = key;
  for (const button of document.querySelectorAll("#workflows button")) {
    button.classList.toggle("selected", button.dataset.key === key);
  }
  $("title").textContent = key;
  try {
    const workflow = await getJson("/api/workflows/" + encodeURIComponent(key));
    $("state").textContent = workflow.state + (workflow.stuck ? " · past its SLA" : "");
    drawTimeline(workflow.stages);
    const body = $("stages").querySelector("tbody");
    body.replaceChildren();
    for (const stage of workflow.stages) {
      const tr = el("tr");
      const object = stage.object.type + " " + stage.object.key + (stage.object.version ? " v" + stage.object.version : "");
      tr.append(el("td", stage.stage), el("td", stage.event), el("td", object), el("td", stage.when),
                el("td", stage.detail), el("td", seconds(stage.propagation_seconds)), el("td", stage.trace_id, "mono"));
      body.append(tr);
    }
    $("stages").hidden = false;
    const breaches = $("breaches");
    breaches.replaceChildren();
    for (const breach of workflow.breaches) {
      breaches.append(el("div", `${breach.stage}: ${breach.object.type} ${breach.object.key} waiting since ` +
        `${breach.waiting_since} (limit ${breach.limit_seconds} s, ${breach.criticality}) · ${breach.exception_id}`,
        "tag stuck"));
    }
  } catch (error) {
    $("state").textContent = error.message;
    $("timeline").replaceChildren();
    $("stages").hidden = true;
  }
}

let typing = null;
$("search").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(search, 200); });
refreshSummary(); search();
setInterval(() => { refreshSummary(); search(); }, 5000);
