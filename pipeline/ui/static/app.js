// detcrop ui: the page talks to the JSON API documented in the README, nothing else.
"use strict";

const $ = (id) => document.getElementById(id);
let project = null;       // last GET /api/project
let training = null;      // last training status
let events = null;        // EventSource while training
let cameraTarget = null;  // {kind: "class", name} or {kind: "test"}
let lastPrediction = null;

// ---------------------------------------------------------------- API
async function api(method, url, body) {
  const options = {method, headers: {}};
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, options);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function say(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

async function reload() {
  project = await api("GET", "/api/project");
  render();
}

// ---------------------------------------------------------------- classes and images
function render() {
  if (document.activeElement !== $("project-name")) $("project-name").value = project.name;
  $("find-object").checked = project.find_object.enabled;
  if (document.activeElement !== $("find-target")) $("find-target").value = project.find_object.target;
  renderClasses();
  renderSettings();
  renderTrainButton();
  renderBlocks();
  renderModel();
}

function renderClasses() {
  const container = $("classes");
  container.replaceChildren();
  for (const folder of project.not_classes) {
    const note = document.createElement("p");
    note.className = "message error not-class";
    note.textContent = `The folder "${folder.folder}" is not a class and is left out of training: ${folder.reason}. ` +
      `To fix it, ${folder.fix}.`;
    container.append(note);
  }
  const need = project.limits.min_images_per_class;
  for (const cls of project.classes) {
    const card = document.createElement("div");
    card.className = "class-card";
    card.dataset.class = cls.name;

    const head = document.createElement("div");
    head.className = "class-head";
    const name = document.createElement("input");
    name.className = "class-name";
    name.value = cls.name;
    name.maxLength = 64;
    name.setAttribute("aria-label", `Class name ${cls.name}`);
    name.addEventListener("change", () => renameClass(cls.name, name.value));
    name.addEventListener("keydown", (event) => { if (event.key === "Enter") name.blur(); });
    const remove = document.createElement("button");
    remove.textContent = "Delete class";
    remove.className = "delete-class";
    remove.addEventListener("click", () => deleteClass(cls.name));
    head.append(name, remove);

    const count = document.createElement("p");
    const short = cls.readable < need;
    const unreadable = cls.images.length - cls.readable;
    count.className = "class-count" + (short ? " short" : "");
    count.textContent = `${cls.readable} image${cls.readable === 1 ? "" : "s"}` +
      (unreadable ? ` (${unreadable} more that cannot be read: delete ${unreadable === 1 ? "it" : "them"})` : "") +
      (short ? ` - add ${need - cls.readable} more to train` : "");

    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    for (const image of cls.images) {
      const thumb = document.createElement("div");
      thumb.className = "thumb" + (image.whole_photo ? " whole" : "");
      const img = document.createElement("img");
      img.src = image.url;
      img.alt = `${cls.name} image`;
      img.loading = "lazy";
      const x = document.createElement("button");
      x.className = "delete";
      x.textContent = "\u2715";
      x.title = "Delete this image";
      x.setAttribute("aria-label", "Delete this image");
      x.addEventListener("click", () => deleteImage(cls.name, image.id));
      thumb.append(img, x);
      if (image.unreadable) {
        thumb.classList.add("unreadable");
        thumb.title = `Cannot be read, left out of training: ${image.unreadable}`;
      }
      if (image.whole_photo) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = "whole";
        badge.title = "Nothing was found: the whole photo was added";
        thumb.append(badge);
      }
      thumbs.append(thumb);
    }

    const actions = document.createElement("div");
    actions.className = "class-actions";
    const upload = document.createElement("label");
    upload.className = "button";
    upload.textContent = "Upload photos";
    const input = document.createElement("input");
    input.type = "file";
    input.multiple = true;
    input.hidden = true;
    input.accept = "image/jpeg,image/png,image/bmp,image/webp";
    input.className = "upload-input";
    input.addEventListener("change", () => { uploadImages(cls.name, input.files); input.value = ""; });
    upload.append(input);
    const camera = document.createElement("button");
    camera.textContent = "Camera";
    camera.className = "camera-button";
    camera.addEventListener("click", () => openCamera({kind: "class", name: cls.name}));
    const drop = document.createElement("span");
    drop.className = "drop-hint";
    drop.textContent = "or drop photos here (jpg, png, bmp; 10 MB each)";
    actions.append(upload, camera, drop);

    card.addEventListener("dragover", (event) => { event.preventDefault(); card.classList.add("drag"); });
    card.addEventListener("dragleave", () => card.classList.remove("drag"));
    card.addEventListener("drop", (event) => {
      event.preventDefault();
      card.classList.remove("drag");
      uploadImages(cls.name, event.dataTransfer.files);
    });
    card.append(head, count, thumbs, actions);
    container.append(card);
  }
}

// The server refuses a request body over limits.max_request_bytes: files go in batches under it
// (with room for the form's own bytes); a file over the per-file limit is refused here, unsent.
function uploadBatches(files) {
  const perFile = project.limits.max_upload_bytes;
  const budget = project.limits.max_request_bytes - 1024 * 1024;
  const batches = [], refused = [];
  let batch = [], size = 0;
  for (const file of files) {
    if (file.size > perFile) {
      refused.push({file: file.name, reason: `file is over the limit of ${perFile / 2 ** 20} MB`});
      continue;
    }
    if (batch.length && size + file.size > budget) { batches.push(batch); batch = []; size = 0; }
    batch.push(file);
    size += file.size;
  }
  if (batch.length) batches.push(batch);
  return {batches, refused};
}

async function postImages(className, files) {
  const {batches, refused} = uploadBatches(files);
  const result = {added: [], duplicates: [], refused};
  for (const batch of batches) {
    const form = new FormData();
    for (const file of batch) form.append("files", file, file.name);
    const part = await api("POST", `/api/classes/${encodeURIComponent(className)}/images`, form);
    for (const key of ["added", "duplicates", "refused"]) result[key].push(...part[key]);
  }
  return result;
}

async function uploadImages(className, fileList) {
  const files = Array.from(fileList || []);  // a copy: the input's own list empties when it is reset
  if (!files.length) return;
  say($("classes-message"), `Adding ${files.length} image${files.length === 1 ? "" : "s"} to ${className}...`);
  try {
    const result = await postImages(className, files);
    const parts = [`${className}: added ${result.added.length}`];
    if (result.duplicates.length) parts.push(`${result.duplicates.length} already there`);
    for (const refused of result.refused) parts.push(`refused ${refused.file}: ${refused.reason}`);
    say($("classes-message"), parts.join("; "), result.refused.length > 0);
    showDetections(files, result.added.concat(result.duplicates));
  } catch (error) {
    say($("classes-message"), error.message, true);
  }
  await reload();
}

// With "find the object first" on: each added photo with the detector's box drawn on it.
function showDetections(files, entries) {
  const box = $("detections");
  box.replaceChildren();
  const caption = document.createElement("p");
  caption.className = "hint";
  caption.textContent = "Just added: the box is what the detector found; the crop inside it went into the class.";
  const byName = new Map(files.map((file) => [file.name, file]));
  for (const entry of entries) {
    if (!entry.detection || !byName.has(entry.file)) continue;
    const [width, height] = entry.detection.photo_size;
    const svg = svgElement("svg", {viewBox: `0 0 ${width} ${height}`, class: "detection"});
    svg.append(svgElement("image", {href: URL.createObjectURL(byName.get(entry.file)), width, height}));
    if (entry.detection.box) {
      const [x1, y1, x2, y2] = entry.detection.box;
      svg.append(svgElement("rect", {x: x1, y: y1, width: x2 - x1, height: y2 - y1, fill: "none",
                                     stroke: "#ffd400", "stroke-width": Math.max(3, width / 40)}));
    }
    const title = svgElement("title", {}, entry.detection.box
      ? `found (score ${entry.detection.score.toFixed(2)}): the crop was added`
      : "nothing found: the whole photo was added");
    svg.append(title);
    box.append(svg);
  }
  box.hidden = box.children.length === 0;
  if (!box.hidden) box.prepend(caption);
}

async function addClass(event) {
  event.preventDefault();
  const name = $("new-class").value;
  try {
    await api("POST", "/api/classes", {name});
    $("new-class").value = "";
    say($("classes-message"), "");
  } catch (error) {
    say($("classes-message"), error.message, true);
  }
  await reload();
}

async function renameClass(oldName, newName) {
  try {
    await api("PATCH", `/api/classes/${encodeURIComponent(oldName)}`, {name: newName});
    say($("classes-message"), "");
  } catch (error) {
    say($("classes-message"), error.message, true);
  }
  await reload();
}

async function deleteClass(name) {
  const count = project.classes.find((cls) => cls.name === name).images.length;
  if (count && !confirm(`Delete the class ${name} and its ${count} images?`)) return;
  try { await api("DELETE", `/api/classes/${encodeURIComponent(name)}`); }
  catch (error) { say($("classes-message"), error.message, true); }
  await reload();
}

async function deleteImage(className, id) {
  try { await api("DELETE", `/api/classes/${encodeURIComponent(className)}/images/${id}`); }
  catch (error) { say($("classes-message"), error.message, true); }
  await reload();
}

async function saveFindObject() {
  try {
    await api("PATCH", "/api/project", {find_object: {enabled: $("find-object").checked, target: $("find-target").value}});
    say($("classes-message"), $("find-object").checked
      ? "New photos go through the detector first (the first one takes a few seconds while it loads)." : "");
  } catch (error) {
    say($("classes-message"), error.message, true);
  }
  await reload();
}

// ---------------------------------------------------------------- camera
async function openCamera(target) {
  cameraTarget = target;
  $("camera-title").textContent = target.kind === "test" ? "Camera: test an image" : `Camera: add to ${target.name}`;
  $("camera").hidden = false;
  say($("camera-message"), "");
  const video = $("camera-video");
  if (video.srcObject) return;
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480}, audio: false});
  } catch (error) {
    say($("camera-message"), `No camera: ${error.message}`, true);
  }
}

function closeCamera() {
  const video = $("camera-video");
  if (video.srcObject) video.srcObject.getTracks().forEach((track) => track.stop());
  video.srcObject = null;
  $("camera").hidden = true;
}

async function capture() {
  const video = $("camera-video");
  if (!video.srcObject || !video.videoWidth) {
    say($("camera-message"), "The camera is not ready yet.", true);
    return;
  }
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
  const file = new File([blob], `camera-${Date.now()}.jpg`, {type: "image/jpeg"});
  if (cameraTarget.kind === "test") await testImage(file);
  else await uploadImages(cameraTarget.name, [file]);
  say($("camera-message"), "Captured.");
}

// ---------------------------------------------------------------- training
function renderSettings() {
  const container = $("settings");
  if (container.children.length) return;  // keep what the user is typing
  const labels = {epochs: "Epochs", batch_size: "Batch size", learning_rate: "Learning rate", val_ratio: "Validation ratio"};
  for (const [key, label] of Object.entries(labels)) {
    const [low, high] = project.setting_ranges[key];
    const setting = document.createElement("div");
    setting.className = "setting";
    setting.innerHTML = `<label for="setting-${key}"></label><input type="number" id="setting-${key}"><p></p>`;
    setting.querySelector("label").textContent = label;
    const input = setting.querySelector("input");
    input.min = low;
    input.max = high;
    input.step = Number.isInteger(project.settings[key]) ? 1 : "any";
    input.value = project.settings[key];
    setting.querySelector("p").textContent = project.setting_help[key];
    container.append(setting);
  }
}

function renderTrainButton() {
  const busy = training && training.state === "training";
  const short = Object.entries(project.short_classes);
  let reason = "";
  if (project.classes.length < project.limits.min_classes) reason = `Add at least ${project.limits.min_classes} classes.`;
  else if (short.length) reason = "Needs more images: " + short.map(([name, count]) => `${name} (${count} of ${project.limits.min_images_per_class})`).join(", ");
  $("train-button").disabled = busy || reason !== "";
  $("train-reason").textContent = busy ? "" : reason;
  $("cancel-button").hidden = !busy;
}

async function startTraining() {
  const body = {};
  for (const key of ["epochs", "batch_size", "learning_rate", "val_ratio"]) body[key] = Number($(`setting-${key}`).value);
  try {
    await api("POST", "/api/train", body);
    say($("train-message"), "Preparing the images...");
    followTraining();
  } catch (error) {
    say($("train-message"), error.message, true);
  }
}

function showTraining(status) {
  training = status;
  const epochs = status.epochs || 0;
  const done = status.history.length;
  $("progress").hidden = status.state !== "training";
  $("progress-bar").style.width = epochs ? `${Math.min(100, (100 * done) / epochs)}%` : "0";
  drawAccuracyChart($("chart"), status.history, status.state === "training" ? epochs : done);
  const last = status.history[status.history.length - 1];
  const accuracy = last && last.val_acc !== null ? ` - validation accuracy ${(100 * last.val_acc).toFixed(0)}%` : "";
  const best = Math.max(...status.history.map((row) => row.val_acc ?? 0));
  const messages = {
    idle: "",
    training: `Training: ${status.phase}${done ? `, epoch ${done} of at most ${epochs}` : ""}${accuracy}`,
    done: `Trained: ${done} epochs; the model keeps its best epoch (validation accuracy ${(100 * best).toFixed(0)}%). Test it below.`,
    failed: `Training failed: ${status.error}`,
    cancelled: "Training cancelled; the previous model (if any) is kept.",
  };
  say($("train-message"), messages[status.state] ?? status.state, status.state === "failed");
  if (project) renderTrainButton();
}

function followTraining() {
  if (events) events.close();
  const status = {state: "training", phase: "preparing images", error: null, epochs: training ? training.epochs : 0, history: []};
  events = new EventSource("/api/train/events");
  events.addEventListener("epoch", (event) => {
    status.history.push(JSON.parse(event.data));
    showTraining(status);
  });
  events.addEventListener("state", async (event) => {
    Object.assign(status, JSON.parse(event.data));
    showTraining(status);
    if (status.state !== "training") {
      events.close();
      events = null;
      await reload();
    }
  });
}

async function cancelTraining() {
  await api("POST", "/api/train/cancel");
  say($("train-message"), "Cancelling...");
}

// ---------------------------------------------------------------- testing
function renderBlocks() {
  const names = project.model ? project.model.class_names : project.classes.map((cls) => cls.name);
  for (const id of ["block-class-1", "block-class-2"]) {
    const select = $(id);
    const chosen = select.value;
    select.replaceChildren(...names.map((name) => new Option(name, name)));
    if (names.includes(chosen)) select.value = chosen;
  }
  updateBlocks();
}

function updateBlocks() {
  const result = lastPrediction;
  $("block-result").textContent = result ? result.top_class : "(none)";
  const first = $("block-class-1").value, second = $("block-class-2").value;
  $("block-confidence").textContent = result && first in result.confidences ? result.confidences[first].toFixed(2) : "0";
  $("block-is").textContent = result && result.is_class[second] ? "true" : "false";
}

async function testImage(file) {
  if (!file) return;
  const preview = $("test-preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const form = new FormData();
  form.append("file", file, file.name);
  say($("test-message"), "Testing...");
  try {
    lastPrediction = await api("POST", "/api/predict", form);
    say($("test-message"), lastPrediction.unsure ? "The model is not sure about this one." : "");
  } catch (error) {
    lastPrediction = null;
    say($("test-message"), error.message, true);
  }
  renderPrediction();
}

function renderPrediction() {
  const result = lastPrediction;
  $("test-top").textContent = result ? result.top_class : "-";
  const bars = $("bars");
  bars.replaceChildren();
  if (result) {
    for (const [name, value] of Object.entries(result.confidences)) {
      const bar = document.createElement("div");
      bar.className = "bar" + (name === result.top_class ? " top" : "");
      bar.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
      bar.querySelector(".name").textContent = name;
      bar.querySelector(".fill").style.width = `${(100 * value).toFixed(1)}%`;
      bar.querySelector(".fill").style.display = "block";
      bar.querySelector(".value").textContent = `${(100 * value).toFixed(0)}%`;
      bars.append(bar);
    }
  }
  updateBlocks();
}

function renderModel() {
  const model = project.model;
  for (const id of ["download-tflite", "download-savedmodel"]) $(id).classList.toggle("disabled", !model);
  $("test-camera").disabled = !model;
  $("model-info").textContent = model
    ? `Model of ${model.trained_at}: classes ${model.class_names.join(", ")}; validation accuracy ` +
      `${(100 * model.accuracy).toFixed(0)}% on ${model.val_images} images. Run folder: ${model.run_dir}` +
      (model.stale ? " (the classes changed since: train again)" : "")
    : "No model yet: train one first.";
}

// ---------------------------------------------------------------- start
$("add-class").addEventListener("submit", addClass);
$("project-name").addEventListener("change", async () => {
  try { await api("PATCH", "/api/project", {name: $("project-name").value}); }
  catch (error) { say($("classes-message"), error.message, true); }
  await reload();
});
$("find-object").addEventListener("change", saveFindObject);
$("find-target").addEventListener("change", saveFindObject);
$("train-button").addEventListener("click", startTraining);
$("cancel-button").addEventListener("click", cancelTraining);
$("test-file").addEventListener("change", (event) => { testImage(event.target.files[0]); event.target.value = ""; });
$("test-camera").addEventListener("click", () => openCamera({kind: "test"}));
$("camera-capture").addEventListener("click", capture);
$("camera-close").addEventListener("click", closeCamera);
$("block-class-1").addEventListener("change", updateBlocks);
$("block-class-2").addEventListener("change", updateBlocks);

(async () => {
  await reload();
  showTraining(await api("GET", "/api/train/status"));
  if (training.state === "training") followTraining();
})();
