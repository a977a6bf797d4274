// The service's page: send the chosen or dropped image to POST /detect, then draw its boxes the way
// detect.py draws them (line width and label size in proportion to the image), list them and the timing.
"use strict";

const element = (id) => document.getElementById(id);
const DISPLAY = 640; // small images are drawn scaled up to about this many pixels
let model = null;
let lastFile = null;

function setStatus(text, isError = false) {
  element("status").textContent = text;
  element("status").classList.toggle("error", isError);
}

async function loadModel() {
  const response = await fetch("model");
  model = await response.json();
  const size = model.input_size.join("x");
  element("model").textContent =
    `${model.weights} · ${model.runtime} · ${model.precision} · input ${size} · ${model.names.length} classes`;
  element("conf").value = model.defaults.conf;
  element("iou").value = model.defaults.iou;
  element("model").dataset.ready = "true";
}

async function post(file, annotated) {
  const form = new FormData();
  form.append("image", file);
  const query = new URLSearchParams({ conf: element("conf").value, iou: element("iou").value });
  if (annotated) query.set("annotated", "true");
  return fetch(`detect?${query}`, { method: "POST", body: form });
}

async function errorSentence(response) {
  try {
    return (await response.json()).detail;
  } catch {
    return `the server answered ${response.status} ${response.statusText}.`;
  }
}

function detect(file) {
  lastFile = file;
  send(file).catch((error) => setStatus(`the request failed: ${error}`, true));
}

async function send(file) {
  setStatus(`detecting in ${file.name}…`);
  const response = await post(file, false);
  if (!response.ok) {
    setStatus(await errorSentence(response), true);
    return;
  }
  const answer = await response.json();
  let bitmap;
  let drawnByServer = false;
  try {
    bitmap = await createImageBitmap(file); // EXIF orientation applied, as the server applies it
  } catch {
    // a format this browser does not draw (TIFF): show the server's drawing of the boxes instead
    bitmap = await createImageBitmap(await (await post(file, true)).blob());
    drawnByServer = true;
  }
  draw(bitmap, answer, !drawnByServer);
  list(answer);
  element("result").hidden = false;
  const count = answer.detections.length;
  setStatus(`${file.name}: ${count} detection${count === 1 ? "" : "s"}`);
}

function draw(bitmap, answer, withBoxes) {
  const canvas = element("canvas");
  const context = canvas.getContext("2d");
  const { width, height } = answer.image;
  const scale = Math.max(1, Math.floor(DISPLAY / Math.max(width, height)));
  canvas.width = width * scale;
  canvas.height = height * scale;
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const side = (width + height) / 2; // the sizes of utils/evaluation/plots.py's draw_boxes
  const lineWidth = Math.max(Math.round(0.003 * side), 2) * scale;
  const fontPixels = Math.max(0.001 * side, 0.35) * 22 * scale;
  context.font = `${fontPixels}px sans-serif`;
  context.textBaseline = "top";
  for (const found of withBoxes ? answer.detections : []) {
    const [x1, y1, x2, y2] = found.xyxy.map((value) => value * scale);
    const color = model.colors[found.class % model.colors.length];
    context.lineWidth = lineWidth;
    context.strokeStyle = color;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `${found.name} ${found.confidence.toFixed(2)}`;
    const labelWidth = context.measureText(label).width + 4;
    const labelHeight = fontPixels * 1.25;
    const top = y1 - labelHeight >= 0 ? y1 - labelHeight : y1;
    context.fillStyle = color;
    context.fillRect(x1, top, labelWidth, labelHeight);
    context.fillStyle = "#fff";
    context.fillText(label, x1 + 2, top + fontPixels * 0.12);
  }
  canvas.dataset.boxes = String(answer.detections.length);
}

function list(answer) {
  const body = element("detections").querySelector("tbody");
  body.replaceChildren();
  answer.detections.forEach((found, index) => {
    const row = body.insertRow();
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = model.colors[found.class % model.colors.length];
    row.insertCell().textContent = String(index + 1);
    const name = row.insertCell();
    name.append(swatch, `${found.name} (${found.class})`);
    row.insertCell().textContent = found.confidence.toFixed(3);
    for (const value of found.xyxy) row.insertCell().textContent = value.toFixed(1);
  });
  element("empty").hidden = answer.detections.length > 0;
  const ms = answer.ms;
  element("timing").textContent =
    `${answer.image.width}x${answer.image.height} px · inference ${ms.inference.toFixed(1)} ms ` +
    `(batch of ${answer.batch}) · NMS ${ms.nms.toFixed(1)} ms · decode ${ms.decode.toFixed(1)} ms · ` +
    `queue ${ms.queue.toFixed(1)} ms · total ${ms.total.toFixed(1)} ms`;
}

function wire() {
  const drop = element("drop");
  element("file").addEventListener("change", (event) => {
    if (event.target.files.length) detect(event.target.files[0]);
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) detect(event.dataTransfer.files[0]);
  });
  for (const id of ["conf", "iou"]) {
    element(id).addEventListener("change", () => lastFile && detect(lastFile));
  }
}

wire();
loadModel().catch((error) => setStatus(`could not read the model's description: ${error}`, true));
