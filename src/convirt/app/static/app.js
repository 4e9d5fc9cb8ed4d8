// convirt explorer: one page over the JSON API of convirt/app/server.py. Text from the server (file names, labels,
// queries, messages) is only ever set as textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { about: null, text: "", query: null, selected: null };

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

async function imageBlob(path) {
  const response = await fetch(path);
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return { url: URL.createObjectURL(await response.blob()), headers: response.headers };
}

function params(extra) {
  const values = { k: $("k").value, ...extra };
  const label = $("label").value;
  if (label) {
    values.label = label;
    if ($("only").checked) values.only = "true";
  }
  return new URLSearchParams(values).toString();
}

function imageUrl(ref, size) {
  const version = state.about ? state.about.version : "";
  if (ref.upload) return `/api/upload/${encodeURIComponent(ref.upload)}/image?size=${size}`;
  return `/api/image/${ref.row}?size=${size}&v=${version}`;
}

function refParams(ref) {
  return ref.upload ? { upload: ref.upload } : { row: String(ref.row) };
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function thumbnail(ref, size, alt) {
  const img = element("img");
  img.alt = alt;
  img.loading = "lazy";
  img.src = imageUrl(ref, size);
  img.addEventListener("error", () => img.replaceWith(element("div", "missing", "image unavailable")));
  return img;
}

function renderResults(result, title, mode) {
  $("results-title").textContent = title;
  const grid = $("results");
  grid.replaceChildren();
  grid.dataset.mode = mode;
  for (const hit of result.hits) {
    const card = element("button", "hit" + (hit.match ? " match" : ""));
    card.type = "button";
    card.dataset.row = String(hit.row);
    card.title = hit.path;
    card.append(thumbnail({ row: hit.row }, 192, hit.name));
    const meta = element("div", "meta");
    meta.append(element("span", "rank", `#${hit.rank}`), element("span", "score", hit.score.toFixed(3)));
    card.append(meta, element("div", "name", hit.name));
    if (hit.labels.length) card.append(element("div", "labels", hit.labels.join(" + ")));
    card.addEventListener("click", () => searchSimilar({ row: hit.row, name: hit.name }));
    grid.append(card);
  }
  const precision = result.precision;
  $("precision").textContent = precision
    ? `Precision@${precision.k} for ${precision.label}: ${precision.relevant}/${precision.k} = ` +
      `${(100 * precision.value).toFixed(1)} %` + ($("only").checked ? " (showing only this label)" : "")
    : "";
  if (!result.hits.length) $("precision").textContent = "no image matches";
}

// The address bar keeps the current query (?q=TEXT or ?similar=ROW, with k, label, only and select=ROW for the
// detail panel), so a view can be reloaded, bookmarked or opened directly.
function remember(values) {
  const search = new URLSearchParams(params(values));
  if (state.selected && state.selected.row !== undefined && !values.similar) search.set("select", state.selected.row);
  history.replaceState(null, "", `?${search}`);
}

async function searchText(text) {
  state.text = text;
  state.query = { text };
  try {
    const result = await api(`/api/search?${params({ text })}`);
    remember({ q: text });
    showMessage("");
    renderResults(result, `Text: “${text}”`, "text");
    if (state.selected) showDetail(state.selected);
  } catch (error) {
    showMessage(error.message);
  }
}

async function searchSimilar(ref) {
  state.query = { ref };
  try {
    const result = await api(`/api/similar?${params(refParams(ref))}`);
    if (ref.row !== undefined) remember({ similar: ref.row });
    if (result.query.name) ref.name = result.query.name;
    showMessage("");
    renderResults(result, `Images similar to ${ref.name}`, "image");
    showDetail(ref);
  } catch (error) {
    showMessage(error.message);
  }
}

async function uploadFile(file) {
  if (!file) return;
  const limit = state.about ? state.about.max_upload_bytes : Infinity;
  if (file.size > limit) {
    showMessage(`${file.name} is ${file.size.toLocaleString()} bytes; at most ${limit.toLocaleString()} are accepted`);
    return;
  }
  try {
    const result = await api(`/api/upload?${params({})}`, {
      method: "POST",
      body: file,
      headers: { "Content-Type": "application/octet-stream" },
    });
    showMessage("");
    const ref = { upload: result.query.upload, name: `${file.name} (uploaded)` };
    state.query = { ref };
    renderResults(result, `Images similar to ${ref.name}`, "image");
    showDetail(ref);
  } catch (error) {
    showMessage(error.message);
  }
}

async function showDetail(ref) {
  state.selected = ref;
  $("detail").hidden = false;
  $("detail-name").textContent = ref.name;
  $("detail-image").src = imageUrl(ref, 320);
  const features = state.about.features;
  const figure = $("saliency-figure");
  figure.hidden = true;
  if (!features.saliency) {
    $("saliency-note").textContent = "Grad-CAM needs a ConVIRT checkpoint (a text encoder).";
  } else if (!state.text) {
    $("saliency-note").textContent = "Type a text query to see where the model looks for it in this image.";
  } else {
    $("saliency-note").textContent = "computing Grad-CAM…";
    try {
      const { url, headers } = await imageBlob(`/api/saliency?${new URLSearchParams({ ...refParams(ref), text: state.text })}`);
      $("saliency-image").src = url;
      $("saliency-caption").textContent = `Grad-CAM for “${state.text}” (cosine ${headers.get("X-Similarity")})`;
      figure.hidden = false;
      $("saliency-note").textContent = "";
    } catch (error) {
      $("saliency-note").textContent = `Grad-CAM: ${error.message}`;
    }
  }
  const table = $("zeroshot").tBodies[0];
  table.replaceChildren();
  if (!features.zeroshot) {
    $("zeroshot-note").textContent = "Zero-shot scores need a ConVIRT checkpoint (a text encoder).";
    return;
  }
  try {
    const result = await api(`/api/zeroshot?${new URLSearchParams(refParams(ref))}`);
    $("zeroshot-note").textContent = `prompts: ${result.prompts}; probability = softmax(cosine / ${result.temperature})`;
    for (const score of result.scores) {
      const row = element("tr");
      const bar = element("td", "bar");
      const fill = element("span");
      fill.style.width = `${(100 * score.probability).toFixed(1)}%`;
      bar.append(fill);
      row.append(element("td", "", score.class), bar, element("td", "num", `${(100 * score.probability).toFixed(1)} %`),
        element("td", "num", score.similarity.toFixed(3)));
      table.append(row);
    }
  } catch (error) {
    $("zeroshot-note").textContent = `zero-shot: ${error.message}`;
  }
}

function fillAbout(about) {
  const list = $("about-list");
  list.replaceChildren();
  const rows = [
    ["index file", about.index_file],
    ["images", about.ok ? `${about.images}` + (about.unreadable ? ` (${about.unreadable} unreadable files skipped)` : "") : ""],
    ["image folder", about.root],
    ["embedding space", about.ok ? `${about.space} (${about.dim} dimensions)` : ""],
    ["encoder", about.encoder],
    ["encoder specification", about.encoder_spec],
    ["checkpoint used for queries", about.checkpoint],
    ["weights fingerprint", about.fingerprint],
    ["built", about.built || "(not recorded)"],
    ["labels", about.label_source || "none"],
    ["zero-shot prompts", about.prompts],
    ["Grad-CAM layer", about.saliency_layer],
  ];
  for (const [name, value] of rows) {
    if (value === undefined || value === "") continue;
    list.append(element("dt", "", name), element("dd", "", String(value)));
  }
}

async function start() {
  let about;
  try {
    about = await api("/api/about");
  } catch (error) {
    showMessage(`the explorer did not answer: ${error.message}`);
    return;
  }
  state.about = about;
  fillAbout(about);
  if (!about.ok) {
    $("summary").textContent = "no index loaded";
    showMessage(about.index_error);
    for (const control of $("search-form").elements) control.disabled = true;
    return;
  }
  $("summary").textContent = `${about.images.toLocaleString()} images · space ${about.space} · ${about.encoder || "no encoder"}`;
  $("k").max = String(about.max_k);
  const labels = Object.entries(about.labels);
  if (labels.length) {
    for (const [name, count] of labels) {
      const option = element("option", "", `${name} (${count})`);
      option.value = name;
      $("label").append(option);
    }
    $("label-controls").hidden = false;
  }
  if (about.encoder_error) showMessage(about.encoder_error, "warning");
  if (!about.features.text) {
    $("query").disabled = true;
    $("query").placeholder = "text search is not available for this index (see the message)";
  }
  if (!about.features.upload) $("upload").disabled = true;
  if (about.features.text) $("query").focus();
  await restore(new URLSearchParams(location.search));
}

async function restore(search) {
  if (search.get("k")) $("k").value = search.get("k");
  if (search.get("label")) $("label").value = search.get("label");
  $("only").checked = search.get("only") === "true";
  const select = search.get("select");
  if (search.get("q")) {
    $("query").value = search.get("q");
    await searchText(search.get("q"));
    if (select !== null) {
      const card = document.querySelector(`.hit[data-row="${Number(select)}"]`);
      await showDetail({ row: Number(select), name: card ? card.querySelector(".name").textContent : `image ${select}` });
    }
  } else if (search.get("similar") !== null) {
    const row = Number(search.get("similar"));
    await searchSimilar({ row, name: `image ${row}` });
  }
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  searchText($("query").value);
});
$("upload").addEventListener("change", (event) => uploadFile(event.target.files[0]));
for (const id of ["k", "label", "only"]) {
  $(id).addEventListener("change", () => {
    if (!state.query) return;
    if (state.query.text !== undefined) searchText(state.query.text);
    else searchSimilar(state.query.ref);
  });
}
$("about-toggle").addEventListener("click", () => {
  const panel = $("about");
  panel.hidden = !panel.hidden;
  $("about-toggle").setAttribute("aria-expanded", String(!panel.hidden));
});
start();
