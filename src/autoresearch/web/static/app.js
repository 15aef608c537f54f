// The page of `autoresearch web`: the night as the server streams it (/events), drawn with text nodes only (every
// description, reason and log is an agent's or a run's, never markup), and one experiment on a click.
"use strict";

const $ = (id) => document.getElementById(id);
let chosen = null; // the experiment whose detail is shown
let chartKey = null;

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
    row.addEventListener("click", () => showExperiment(exp.id));
    return row;
  });
  body.replaceChildren(...rows);
}

function draw(night) {
  const connection = $("connection");
  connection.textContent = night.running ? "running" : "stopped";
  connection.className = "connection " + (night.running ? "running" : "stopped");
  $("error").hidden = !night.error;
  if (night.error) {
    $("error").textContent = night.error;
    return;
  }
  $("workspace").textContent = night.workspace;
  $("title").textContent = night.title;
  $("status").textContent = night.status;
  drawTable(night.experiments);
  if (night.chart !== chartKey && night.experiments.length) {
    chartKey = night.chart;
    $("chart").src = "/progress.svg?" + encodeURIComponent(night.chart);
    $("chart").hidden = false;
  }
  if (chosen !== null) showExperiment(chosen);
}

async function showExperiment(id) {
  chosen = id;
  for (const row of $("experiments").tBodies[0].rows) {
    row.classList.toggle("chosen", row.dataset.id === String(id));
  }
  const answer = await fetch("/api/experiments/" + id);
  const found = await answer.json();
  if (chosen !== id) return; // another was clicked meanwhile
  $("detail").hidden = false;
  $("detail-title").textContent = "Experiment " + id;
  $("detail-text").replaceChildren(...(found.text ?? found.error).split("\n").map(diffLine));
}

function diffLine(line) {
  // A line of train.py's diff coloured by what it does; each line its own block, as text
  const span = document.createElement("span");
  span.textContent = line + "\n";
  if (/^\+(?!\+\+ )/.test(line)) span.className = "added";
  else if (/^-(?!-- )/.test(line)) span.className = "removed";
  return span;
}

function follow() {
  const events = new EventSource("/events");
  events.onmessage = (message) => draw(JSON.parse(message.data));
  events.onerror = () => {
    // The browser tries again by itself; meanwhile the page says it is not live
    $("connection").textContent = "not connected: retrying";
    $("connection").className = "connection lost";
  };
}

follow();
