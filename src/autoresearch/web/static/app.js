// The page of `autoresearch web`: the night as the server streams it (/events), drawn with text nodes only (every
// description, reason and log is an agent's or a run's, never markup), and one experiment on a click.
"use strict";

const $ = (id) => document.getElementById(id);
let chosen = null; // the experiment whose detail is shown
let chosenRow = null; // its row as last drawn: its detail is asked for again when that changes, or while it runs
let chartKey = null;
let drawnRows = null; // the rows as last drawn: the table is built again only when they change
const UNFINISHED = ["running", "queued", "interrupted"]; // no verdict yet: nothing of theirs on the chart

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function number(value, digits, signed) {
  if (value === null || value === undefined) return "";
  const text = value.toFixed(digits);
  return signed && value > 0 ? "+" + text : text;
}

function drawTable(experiments) {
  // The status line changes every second while a run trains; the rows only when an experiment does. Built again
  // only then, a night of thousands costs the browser nothing between, and a click or a selection in it holds.
  const drawn = JSON.stringify(experiments);
  if (drawn === drawnRows) return;
  drawnRows = drawn;
  const body = $("experiments").tBodies[0];
  const rows = experiments.map((exp) => {
    const row = document.createElement("tr");
    row.dataset.id = String(exp.id);
    row.className = exp.status + (exp.best ? " best" : "") + (exp.id === chosen ? " chosen" : "");
    cell(row, String(exp.id), "number");
    cell(row, exp.status, "status");
    cell(row, number(exp.val_bpb, 6, false), "number");
    cell(row, number(exp.delta, 6, true), "number");
    cell(row, exp.worker);
    cell(row, exp.description).title = exp.reason;
    row.addEventListener("click", () => showExperiment(exp.id, true));
    return row;
  });
  body.replaceChildren(...rows);
}

let lastNight = null;

function draw(night) {
  // The stream leaves the rows out where they are as it last sent them
  if (!night.error && !("experiments" in night)) night.experiments = lastNight?.experiments ?? [];
  lastNight = night;
  const connection = $("connection");
  connection.textContent = night.running ? "running" : "stopped";
  connection.className = "connection " + (night.running ? "running" : "stopped");
  $("error").hidden = !night.error;
  if (night.error) {
    // Nothing read before stays on the page under it: the ledger it came from is not to be trusted now
    $("error").textContent = night.error;
    $("title").textContent = $("status").textContent = "";
    drawTable([]);
    $("chart").hidden = $("detail").hidden = true;
    chartKey = chosen = null;
    return;
  }
  $("workspace").textContent = night.workspace;
  $("title").textContent = night.title;
  $("status").textContent = night.status;
  drawTable(night.experiments);
  // The chart once an experiment has a verdict: while the baseline trains, it has nothing to draw
  const anyFinished = night.experiments.some((exp) => !UNFINISHED.includes(exp.status));
  $("chart").hidden = !anyFinished;
  if (anyFinished && night.chart !== chartKey) {
    chartKey = night.chart;
    $("chart").src = "/progress.svg?" + encodeURIComponent(night.chart);
  }
  if (chosen !== null) {
    const row = night.experiments.find((exp) => exp.id === chosen) ?? null;
    if (JSON.stringify(row) !== chosenRow || row?.status === "running") showExperiment(chosen);
  }
}

async function showExperiment(id, clicked) {
  chosen = id;
  let clickedRow = null;
  for (const row of $("experiments").tBodies[0].rows) {
    row.classList.toggle("chosen", row.dataset.id === String(id));
    if (row.dataset.id === String(id)) clickedRow = row;
  }
  if (clicked && clickedRow) besideTheTable(clickedRow);
  let text;
  try {
    const found = await (await fetch("/api/experiments/" + id)).json();
    text = found.text ?? found.error;
  } catch {
    text = "experiment " + id + ": the server did not answer (is `autoresearch web` still running?)";
  }
  if (chosen !== id) return; // another was clicked meanwhile
  chosenRow = JSON.stringify(lastNight?.experiments?.find((exp) => exp.id === id) ?? null);
  $("detail").hidden = false;
  $("detail-title").textContent = "Experiment " + id;
  if ($("detail-text").textContent !== text + "\n") {
    // Only a change is drawn: what the reader selected or scrolled to in it stays where it was
    $("detail-text").replaceChildren(...text.split("\n").map(diffLine));
  }
  if (clicked) shownWhereSeen($("detail"));
}

function besideTheTable(row) {
  // The table narrows to make room for the detail (on a wide window): the clicked row stays where it was on the
  // screen, not carried thousands of pixels off by the rows above it growing
  const before = row.getBoundingClientRect().top;
  $("detail").hidden = false;
  $("night").classList.add("with-detail");
  window.scrollBy(0, row.getBoundingClientRect().top - before);
}

function shownWhereSeen(element) {
  // Beside the table on a wide window (it stays in view as the table scrolls); below it on a narrow one, where a
  // click far up a long night would show it thousands of rows down, out of sight: brought into view
  const box = element.getBoundingClientRect();
  if (box.top >= window.innerHeight || box.bottom <= 0) element.scrollIntoView({ block: "start" });
}

function diffLine(line) {
  // A line of train.py's diff coloured by what it does; each line its own block, as text
  const span = document.createElement("span");
  span.textContent = line + "\n";
  if (/^\+(?!\+\+ )/.test(line)) span.className = "added";
  else if (/^-(?!-- )/.test(line)) span.className = "removed";
  return span;
}

let events = null;

function follow() {
  events = new EventSource("/events");
  events.onmessage = (message) => draw(JSON.parse(message.data));
  events.onerror = () => {
    // The browser tries again by itself; meanwhile the page says it is not live
    $("connection").textContent = "not connected: retrying";
    $("connection").className = "connection lost";
  };
}

// A browser keeps six connections to a server at most, and each open stream holds one: a tab in the background lets
// its go (a seventh tab would wait for ever), and follows again, from the night as it is then, when it is shown
document.addEventListener("visibilitychange", () => {
  if (document.hidden && events) {
    events.close();
    events = null;
  } else if (!document.hidden && !events) {
    follow();
  }
});

follow();
