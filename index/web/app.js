// The search page: text queries (GET /search), click a hit to search by its image (POST /search/image).
// The state lives in the URL (?q=…&k=…&lang=… or ?item=ID&k=…), so a search can be shared and Back works.
"use strict";
const $ = (id) => document.getElementById(id);
const form = $("search"), status = $("status"), list = $("hits"), queryImage = $("query-image");

function say(text, isError = false) {
  status.textContent = text;
  status.className = isError ? "error" : "";
}

async function call(url, options) {
  const t = performance.now();
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return [body, performance.now() - t];
}

function render(hits, lang) {
  list.replaceChildren(...hits.map((h) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "hit";
    button.dataset.id = h.id_str;  // int64 ids do not fit a JavaScript number
    button.title = `search by this image (${h.key})`;
    const img = document.createElement("img");
    img.src = h.image;
    img.alt = h.caption || h.key;
    img.loading = "lazy";
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = h.caption || h.key;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `#${h.rank} · ${h.score.toFixed(3)}`;
    button.append(img, caption, score);
    button.addEventListener("click", () => go({ item: h.id_str, k: $("k").value, lang }));
    li.append(button);
    return li;
  }));
}

async function run(params) {
  const k = params.get("k") || "10", lang = params.get("lang") || "";
  $("k").value = k;
  $("lang").value = lang;
  try {
    if (params.has("item")) {
      const id = params.get("item");
      $("q").value = "";
      queryImage.hidden = false;
      queryImage.querySelector("img").src = `/items/${id}/image`;
      say("searching by image…");
      const blob = await (await fetch(`/items/${id}/image`)).blob();
      const data = new FormData();
      data.append("image", blob, "query.png");
      const [body, ms] = await call(`/search/image?k=${encodeURIComponent(k)}&lang=${encodeURIComponent(lang)}`,
                                    { method: "POST", body: data });
      render(body.hits, lang);
      say(`${body.hits.length} similar images of ${body.count} (${ms.toFixed(0)} ms)`);
    } else if (params.get("q")) {
      const q = params.get("q");
      $("q").value = q;
      queryImage.hidden = true;
      const [body, ms] = await call(`/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}` +
                                    `&lang=${encodeURIComponent(lang)}`);
      render(body.hits, lang);
      say(`${body.hits.length} hits of ${body.count} for “${q}” (${ms.toFixed(0)} ms)`);
    } else {
      list.replaceChildren();
      say("type a query in any language and press Enter");
    }
  } catch (e) {
    list.replaceChildren();
    say(e.message, true);
  }
}

function go(values) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(values)) if (value !== "" && value != null) params.set(name, value);
  history.pushState(null, "", `?${params}`);
  run(params);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  go({ q: $("q").value.trim(), k: $("k").value, lang: $("lang").value });
});
window.addEventListener("popstate", () => run(new URLSearchParams(location.search)));
run(new URLSearchParams(location.search));
