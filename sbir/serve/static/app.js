// The page of `sbir serve`: draw (pointer events: mouse, touch, pen) or drop an image, search, show the photos;
// a click on a photo asks the server for its explanation. Talks to the JSON API only (/api/...).
"use strict";

const canvas = document.getElementById("canvas");
const context = canvas.getContext("2d");
const widthInput = document.getElementById("width");
const topkSelect = document.getElementById("topk");
const modeSelect = document.getElementById("mode");
const errorLine = document.getElementById("error");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const explanation = document.getElementById("explanation");

let strokes = [];          // [{width, points: [[x, y], ...]}]: what is drawn, for undo
let current = null;        // the stroke being drawn
let dropped = null;        // an image file dropped or chosen: the query until the next stroke
let lastQuery = null;      // the Blob of the last search, sent again to explain a result
let searchNumber = 0;      // answers to an older search than the latest are ignored
let pending = null;

function redraw() {
  context.fillStyle = "white";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.strokeStyle = "black";
  context.lineCap = "round";
  context.lineJoin = "round";
  for (const stroke of strokes.concat(current ? [current] : [])) {
    context.lineWidth = stroke.width;
    context.beginPath();
    const [first, ...rest] = stroke.points;
    context.moveTo(first[0], first[1]);
    for (const [x, y] of rest.length ? rest : [first]) context.lineTo(x, y);
    context.stroke();
  }
}

function position(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}

canvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  if (dropped) { dropped = null; strokes = []; }
  current = { width: Number(widthInput.value) * canvas.width / 448, points: [position(event)] };
  redraw();
});
canvas.addEventListener("pointermove", (event) => {
  if (!current) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const each of events.length ? events : [event]) current.points.push(position(each));
  redraw();
});
function endStroke() {
  if (!current) return;
  strokes.push(current);
  current = null;
  redraw();
  scheduleSearch();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

document.getElementById("undo").addEventListener("click", () => {
  strokes.pop();
  dropped = null;
  redraw();
  if (strokes.length) scheduleSearch(); else clearAnswers();
});
document.getElementById("clear").addEventListener("click", () => {
  strokes = [];
  dropped = null;
  redraw();
  clearAnswers();
});
document.getElementById("search").addEventListener("click", () => runSearch());
topkSelect.addEventListener("change", () => { if (strokes.length || dropped) runSearch(); });
modeSelect.addEventListener("change", () => { if (strokes.length || dropped) runSearch(); });

// an image file: dropped on the drawing area or chosen
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) useFile(event.dataTransfer.files[0]);
});
document.getElementById("file").addEventListener("change", (event) => {
  if (event.target.files.length) useFile(event.target.files[0]);
  event.target.value = "";
});

function useFile(file) {
  dropped = file;
  strokes = [];
  redraw();
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.onload = () => {  // a preview; the server receives the file itself
    const scale = Math.min(canvas.width / image.width, canvas.height / image.height);
    const w = image.width * scale, h = image.height * scale;
    context.drawImage(image, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  image.src = url;
  runSearch();
}

function showError(message) {
  errorLine.textContent = message;
  errorLine.hidden = !message;
}

function clearAnswers() {
  searchNumber += 1;
  results.replaceChildren();
  explanation.hidden = true;
  showError("");
  statusLine.textContent = "";
}

function scheduleSearch() {
  clearTimeout(pending);
  pending = setTimeout(runSearch, 250);
}

function sketchBlob() {
  if (dropped) return Promise.resolve(dropped);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function answer(response) {
  let body = null;
  try { body = await response.json(); } catch (ignored) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `the server answered ${response.status}`);
  return body;
}

async function runSearch() {
  clearTimeout(pending);
  const number = ++searchNumber;
  const blob = await sketchBlob();
  const form = new FormData();
  form.append("sketch", blob, dropped ? dropped.name : "drawing.png");
  form.append("top_k", topkSelect.value);
  form.append("mode", modeSelect.value);
  statusLine.textContent = "Searching…";
  try {
    const body = await answer(await fetch("/api/search", { method: "POST", body: form }));
    if (number !== searchNumber) return;
    lastQuery = blob;
    showError("");
    explanation.hidden = true;
    showResults(body.results);
    statusLine.textContent = `${body.results.length} photos, best first (${body.mode}). Click one to see why it matches.`;
  } catch (error) {
    if (number !== searchNumber) return;
    results.replaceChildren();
    explanation.hidden = true;
    showError(error.message);
    statusLine.textContent = "";
  }
}

function showResults(found) {
  results.replaceChildren(...found.map((result) => {
    const item = document.createElement("button");
    item.type = "button";
    item.className = "result";
    item.dataset.row = result.row;
    const image = document.createElement("img");
    image.src = result.photo;
    image.alt = `${result.class} (${result.key})`;
    const caption = document.createElement("span");
    caption.className = "caption";
    const name = document.createElement("span");
    name.className = "class";
    name.textContent = result.class || result.key;
    caption.append(name, `#${result.rank} · score ${result.score.toFixed(3)}`);
    item.append(image, caption);
    item.addEventListener("click", () => explain(item, result));
    return item;
  }));
}

async function explain(item, result) {
  for (const other of results.children) other.classList.toggle("chosen", other === item);
  const form = new FormData();
  form.append("sketch", lastQuery, "drawing.png");
  form.append("photo", String(result.row));
  statusLine.textContent = `Explaining #${result.rank}…`;
  try {
    const body = await answer(await fetch("/api/explain", { method: "POST", body: form }));
    document.getElementById("explanation-title").textContent =
      `#${result.rank} ${result.class || result.key}: why it matches` +
      (body.relation === null ? "" : ` (relation score ${body.relation.toFixed(3)})`);
    document.getElementById("explanation-detail").textContent = body.detail;
    document.getElementById("explanation-picture").src = body.picture;
    document.getElementById("explanation-synthesis").src = body.synthesis;
    explanation.hidden = false;
    showError("");
    statusLine.textContent = "";
  } catch (error) {
    showError(error.message);
    statusLine.textContent = "";
  }
}

async function start() {
  redraw();
  try {
    const health = await answer(await fetch("/api/health"));
    document.getElementById("gallery").textContent =
      `${health.gallery} · ${health.index} index · uploads up to ${(health.max_bytes / 1048576).toFixed(0)} MB`;
    modeSelect.replaceChildren(...health.modes.map((mode) => new Option(mode, mode)));
  } catch (error) {
    showError(`The server does not answer: ${error.message}`);
  }
}

start();
