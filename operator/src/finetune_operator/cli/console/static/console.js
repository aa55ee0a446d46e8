// finetune console: live refresh, the cancel button and the playground. Hand-written, no dependencies.
"use strict";

const HEADERS = { "Content-Type": "application/json", "X-Finetune-Console": "1" };
const REFRESH_MS = 2000;

// The live part of a page is fetched again (?fragment=1) while the server says it may still change
// (header X-Refresh: 1); a job that has ended stops the refresh.
function scheduleRefresh() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.refresh) return;
  setTimeout(async () => {
    let again = true;
    try {
      const url = new URL(window.location.href);
      url.searchParams.set("fragment", "1");
      const response = await fetch(url, { cache: "no-store" });
      if (response.ok) {
        live.innerHTML = await response.text();
        bindActions(live);
        again = response.headers.get("X-Refresh") === "1";
      }
    } catch (error) { /* the console restarted or the network blinked: try again */ }
    if (again) scheduleRefresh(); else delete live.dataset.refresh;
  }, REFRESH_MS);
}

function bindActions(root) {
  root.querySelectorAll("button[data-action]").forEach((button) => {
    if (button.dataset.bound) return;
    button.dataset.bound = "1";
    button.addEventListener("click", async () => {
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      const response = await fetch(button.dataset.action, { method: "POST", headers: HEADERS, body: "{}" });
      const answer = await response.json();
      button.textContent = response.ok ? "Cancelling…" : "Cancel failed";
      button.title = answer.message || answer.error || "";
    });
  });
}

function bindPlayground() {
  const form = document.getElementById("chat-form");
  if (!form) return;
  const log = document.getElementById("chat-log");
  const state = document.getElementById("chat-state");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const prompt = String(data.get("prompt") || "").trim();
    if (!prompt) return;
    const turn = document.createElement("div");
    turn.className = "turn";
    const user = document.createElement("div");
    user.className = "user";
    user.textContent = `${data.get("model")} ← ${prompt}`;
    const assistant = document.createElement("div");
    assistant.className = "assistant";
    turn.append(user, assistant);
    log.prepend(turn);
    const send = document.getElementById("chat-send");
    send.disabled = true;
    state.textContent = "answering…";
    try {
      const response = await fetch(form.dataset.endpoint, {
        method: "POST", headers: HEADERS,
        body: JSON.stringify({ model: data.get("model"), prompt, system: data.get("system"),
                               max_tokens: Number(data.get("max_tokens")), temperature: Number(data.get("temperature")) }),
      });
      if (!response.ok) {
        const answer = await response.json();
        assistant.classList.add("error");
        assistant.textContent = answer.error || `error ${response.status}`;
      } else {
        assistant.textContent = await response.text();
        assistant.dataset.done = "1";
      }
    } finally {
      send.disabled = false;
      state.textContent = "";
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  bindActions(document);
  bindPlayground();
  scheduleRefresh();
});
