// The drawing page of `python -m flaxmnist.serve`: white ink on a black pad, as in MNIST. While
// one draws, the pad is sent as a PNG to /api/predict (one request at a time; the latest drawing
// goes next), and the answer's top classes and framed 28x28 image are shown. For tests, <body>
// carries data-version (drawing changes so far) and data-answered (the version shown).
"use strict";

const INK_WIDTH = 18; // pixels of the 280-pixel pad: a pen stroke
const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const framed = document.getElementById("framed");
const topList = document.getElementById("top");
const statusLine = document.getElementById("status");

let version = 0; // bumped by every change of the drawing
let answered = 0; // the version whose answer is shown
let blank = true;
let waiting = false; // a request is in flight
let last = null; // the pointer's last point while a stroke is drawn

function clearPad() {
  ink.fillStyle = "#000";
  ink.fillRect(0, 0, pad.width, pad.height);
  framed.getContext("2d").clearRect(0, 0, framed.width, framed.height);
  topList.replaceChildren();
  statusLine.textContent = "Draw with the mouse, a pen or a finger.";
  statusLine.classList.remove("error");
  blank = true;
  changed();
  answered = version; // nothing to answer for a blank pad
  document.body.dataset.answered = String(answered);
}

function changed() {
  version += 1;
  document.body.dataset.version = String(version);
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) * pad.width) / box.width,
    y: ((event.clientY - box.top) * pad.height) / box.height,
  };
}

function strokeTo(next) {
  ink.strokeStyle = "#fff";
  ink.lineWidth = INK_WIDTH;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(last.x, last.y);
  ink.lineTo(next.x, next.y);
  ink.stroke();
  last = next;
  blank = false;
  changed();
  ask();
}

pad.addEventListener("pointerdown", (event) => {
  pad.setPointerCapture(event.pointerId);
  last = point(event);
  strokeTo(last); // a dot
});
pad.addEventListener("pointermove", (event) => {
  if (last !== null) strokeTo(point(event));
});
for (const end of ["pointerup", "pointercancel"]) {
  pad.addEventListener(end, () => {
    last = null;
  });
}
document.getElementById("clear").addEventListener("click", clearPad);

async function ask() {
  if (waiting || blank || answered === version) return;
  waiting = true;
  const asked = version;
  try {
    const response = await fetch("/api/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image: pad.toDataURL("image/png"), name: "drawing.png", top: 3 }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    if (!blank) show(answer);
  } catch (error) {
    statusLine.textContent = `error: ${error.message}`;
    statusLine.classList.add("error");
  } finally {
    waiting = false;
    answered = Math.max(answered, asked);
    document.body.dataset.answered = String(answered);
    ask(); // the drawing may have changed meanwhile
  }
}

function show(answer) {
  topList.replaceChildren(
    ...answer.top.map(({ class: name, probability }) => {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.className = "class";
      label.textContent = name;
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${(100 * probability).toFixed(1)}%`;
      bar.append(fill);
      const percent = document.createElement("span");
      percent.className = "percent";
      percent.textContent = `${(100 * probability).toFixed(1)} %`;
      item.append(label, bar, percent);
      return item;
    }),
  );
  statusLine.textContent = "";
  statusLine.classList.remove("error");
  drawFramed(answer.framed);
}

function drawFramed(rows) {
  const context = framed.getContext("2d");
  const image = context.createImageData(framed.width, framed.height);
  rows.flat().forEach((grey, i) => {
    image.data.set([grey, grey, grey, 255], 4 * i);
  });
  context.putImageData(image, 0, 0);
}

async function describeRun() {
  const line = document.getElementById("run");
  try {
    const run = await (await fetch("/api/run")).json();
    line.textContent = `${run.model} trained on ${run.dataset}, step ${run.step}`;
  } catch (error) {
    line.textContent = `the run could not be described: ${error.message}`;
  }
}

clearPad();
describeRun();
