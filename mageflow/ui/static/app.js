// The mageflow viewer. Plain JavaScript, no build step, nothing loaded from elsewhere.
//
// Every value that comes from the store (keys, task names, kwargs, results, errors) reaches
// the page through textContent or createTextNode, never innerHTML: a task may be named
// "<script>", and it must show as those characters.
"use strict";

(() => {
  const STATUSES = [
    "pending", "active", "done", "failed", "canceled", "suspended", "interrupted", "expired",
  ];
  const TOKEN_KEY = "mageflow-ui-token";
  const RETRY_MS = 2000;

  const state = {
    selected: null, // key of the workflow shown on the right
    node: null, // key of the node whose details are shown
    nodes: new Map(), // key -> node of the shown tree
    listBadges: new Map(), // key -> badge elements in the list
    treeBadges: new Map(), // key -> badge elements in the tree
    listStream: null,
    treeStream: null,
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // -- the token ----------------------------------------------------------------------------

  // A token given as #token=... is kept for this tab only and taken out of the address bar,
  // so it is not left in the history or shown on screen.
  function takeTokenFromFragment() {
    const found = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!found) return;
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(found[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function authHeaders() {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    return headers;
  }

  function askToken(message) {
    stopStreams();
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token-input").focus();
  }

  function useToken(event) {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    $("login").hidden = true;
    $("app").hidden = false;
    start();
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken("");
  }

  // -- requests -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const text = body && body.error ? `${body.error}: ${body.message}` : `HTTP ${status}`;
      super(text);
      this.status = status;
    }
  }

  async function failure(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) {
      askToken(token() ? "That token was refused." : "");
    }
    return new ApiError(response.status, body);
  }

  async function api(path, options) {
    const response = await fetch(path, { ...options, headers: authHeaders(), cache: "no-store" });
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  // -- server-sent events over fetch ----------------------------------------------------------
  // EventSource cannot send an Authorization header, so the stream is read with fetch().

  function dispatch(block, handlers) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue; // a keep-alive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    const handler = handlers[event];
    if (data.length && handler) handler(JSON.parse(data.join("\n")));
  }

  async function readEvents(body, handlers) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut = buffer.indexOf("\n\n");
      while (cut >= 0) {
        dispatch(buffer.slice(0, cut), handlers);
        buffer = buffer.slice(cut + 2);
        cut = buffer.indexOf("\n\n");
      }
    }
  }

  // Follows a stream until stop(); reconnects after a break (server restart, network blink),
  // but not after a 4xx answer, which a retry would only repeat.
  function follow(path, handlers) {
    const controller = new AbortController();
    let stopped = false;
    (async () => {
      while (!stopped) {
        try {
          const response = await fetch(path, {
            headers: authHeaders(), signal: controller.signal, cache: "no-store",
          });
          if (!response.ok) {
            const error = await failure(response);
            handlers.failed(error);
            if (response.status < 500) return;
          } else {
            setConnection("live", "ok");
            await readEvents(response.body, handlers);
          }
        } catch (error) {
          if (stopped) return;
        }
        setConnection("reconnecting…", "warn");
        await sleep(RETRY_MS);
      }
    })();
    return {
      stop() {
        stopped = true;
        controller.abort();
      },
    };
  }

  function stopStreams() {
    for (const name of ["listStream", "treeStream"]) {
      if (state[name]) state[name].stop();
      state[name] = null;
    }
  }

  function setConnection(text, kind) {
    const conn = $("conn");
    conn.textContent = text;
    conn.className = "conn conn-" + kind;
  }

  // -- statuses -------------------------------------------------------------------------------

  function badge(status, key, registry) {
    const known = STATUSES.includes(status) ? status : "unknown";
    const span = el("span", "badge s-" + known, status);
    if (key && registry) {
      if (!registry.has(key)) registry.set(key, []);
      registry.get(key).push(span);
    }
    return span;
  }

  function setStatus(key, status) {
    const known = STATUSES.includes(status) ? status : "unknown";
    for (const registry of [state.listBadges, state.treeBadges]) {
      for (const span of registry.get(key) || []) {
        span.textContent = status;
        span.className = "badge s-" + known;
      }
    }
    const node = state.nodes.get(key);
    if (node) node.status = status;
  }

  function utc(iso) {
    return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "").replace(/Z$/, "") : "–";
  }

  // -- the workflow list ------------------------------------------------------------------------

  function filterQuery() {
    const params = new URLSearchParams();
    const status = $("f-status").value;
    const task = $("f-task").value.trim();
    const limit = $("f-limit").value.trim();
    if (status) params.set("status", status);
    if (task) params.set("task", task);
    if (limit) params.set("limit", limit);
    return params.toString();
  }

  function renderList(rows) {
    $("list-error").textContent = "";
    state.listBadges.clear();
    const body = $("rows");
    body.replaceChildren();
    if (!rows.length) {
      const cell = el("td", "muted", "No workflow matches.");
      cell.colSpan = 4;
      const tr = el("tr");
      tr.append(cell);
      body.append(tr);
    }
    for (const row of rows) {
      const tr = el("tr", row.key === state.selected ? "selected" : "");
      tr.tabIndex = 0;
      tr.dataset.key = row.key; // attribute values are text, never parsed as markup
      tr.title = row.key;
      const status = el("td");
      status.append(badge(row.status, row.key, state.listBadges));
      tr.append(
        el("td", "time", utc(row.created_at)), status, el("td", "", row.kind),
        el("td", "name", row.name),
      );
      tr.addEventListener("click", () => selectWorkflow(row.key));
      tr.addEventListener("keydown", (event) => {
        if (event.key === "Enter") selectWorkflow(row.key);
      });
      body.append(tr);
    }
  }

  async function loadList() {
    if (state.listStream) state.listStream.stop();
    state.listStream = null;
    const query = filterQuery();
    try {
      renderList(await api("/api/workflows?" + query));
    } catch (error) {
      $("list-error").textContent = error.message;
      return;
    }
    state.listStream = follow("/api/events?" + query, {
      list: renderList,
      status: (change) => setStatus(change.key, change.status),
      error: (problem) => setConnection(problem.message, "bad"),
      failed: (error) => {
        $("list-error").textContent = error.message;
      },
    });
  }

  // -- one workflow's tree -----------------------------------------------------------------------

  function selectWorkflow(key) {
    state.selected = key;
    state.node = key;
    for (const tr of $("rows").children) tr.classList.toggle("selected", tr.dataset.key === key);
    $("empty").hidden = true;
    $("detail").hidden = false;
    $("control-result").textContent = "";
    $("tree-error").textContent = "";
    $("wf-title").textContent = "";
    $("wf-key").textContent = key;
    $("wf-status").replaceChildren();
    $("tree").replaceChildren(el("p", "muted", "loading…"));
    $("node").replaceChildren();
    if (state.treeStream) state.treeStream.stop();
    const path = `/api/events?key=${encodeURIComponent(key)}&traceback=1`;
    state.treeStream = follow(path, {
      tree: renderTree,
      status: (change) => setStatus(change.key, change.status),
      error: (problem) => {
        $("tree-error").textContent = `${problem.error}: ${problem.message}`;
      },
      failed: (error) => {
        $("tree-error").textContent = error.message;
        $("tree").replaceChildren();
      },
    });
  }

  function renderTree(tree) {
    if (tree.key !== state.selected) return;
    $("tree-error").textContent = "";
    state.nodes.clear();
    state.treeBadges.clear();
    $("tree").replaceChildren(renderNode(tree));
    $("wf-title").textContent = `${tree.kind || "?"} ${tree.name || "?"}`;
    $("wf-status").replaceChildren(badge(tree.status, tree.key, state.treeBadges));
    showNode(state.nodes.get(state.node) || tree);
  }

  function kindClass(kind) {
    return ["task", "chain", "swarm"].includes(kind) ? kind : "other";
  }

  function renderNode(node) {
    state.nodes.set(node.key, node);
    const kind = kindClass(node.kind);
    const wrap = el("div", "node k-" + kind);
    wrap.append(nodeBox(node));
    const children = node.children || [];
    if (kind === "chain") {
      const steps = el("div", "steps");
      children.forEach((child, i) => {
        if (i) steps.append(el("span", "arrow", "→"));
        const step = renderNode(child);
        if (node.status === "active" && i === node.current_step) step.classList.add("current");
        steps.append(step);
      });
      wrap.append(steps);
    } else if (children.length) {
      if (node.swarm) wrap.append(progress(node.swarm));
      const members = el("div", "members");
      // A few columns, so a big swarm grows downwards instead of off the side of the page.
      members.style.setProperty("--cols", String(Math.min(children.length, 3)));
      children.forEach((child) => members.append(renderNode(child)));
      wrap.append(members);
    } else if (node.swarm) {
      wrap.append(progress(node.swarm));
    }
    wrap.append(...callbackGroups(node));
    return wrap;
  }

  function nodeBox(node) {
    const box = el("button", "box");
    box.type = "button";
    if (node.key === state.node) box.classList.add("chosen");
    box.append(badge(node.status, node.key, state.treeBadges), el("span", "name", node.name || "?"));
    if (node.kind !== "task") box.append(el("span", "kind", node.kind || "?"));
    box.addEventListener("click", (event) => {
      event.stopPropagation();
      state.node = node.key;
      for (const other of $("tree").querySelectorAll(".box.chosen")) other.classList.remove("chosen");
      box.classList.add("chosen");
      showNode(node);
    });
    return box;
  }

  function callbackGroups(node) {
    const groups = [];
    const callbacks = node.callbacks || {};
    for (const [kind, label] of [["success", "on success"], ["error", "on error"]]) {
      const list = callbacks[kind] || [];
      if (!list.length) continue;
      const group = el("div", "callbacks cb-" + kind);
      group.append(el("div", "cb-label", label));
      const items = el("div", "cb-items");
      list.forEach((cb) => items.append(renderNode(cb)));
      group.append(items);
      groups.push(group);
    }
    return groups;
  }

  function progress(counts) {
    const total = Math.max(Number(counts.total) || 0, 1);
    const parts = ["done", "failed", "canceled", "running", "queued"];
    const bar = el("div", "progress");
    for (const part of parts) {
      const n = Number(counts[part]) || 0;
      const segment = el("div", "seg seg-" + part);
      segment.style.width = `${(100 * n) / total}%`; // CSSOM, which the CSP allows
      segment.title = `${n} ${part}`;
      bar.append(segment);
    }
    let text = `${counts.done} done · ${counts.failed} failed · ${counts.running} running · ` +
      `${counts.queued} queued · of ${counts.total}`;
    if (counts.canceled) text += ` · ${counts.canceled} canceled`;
    if (!counts.closed) text += " · open";
    const box = el("div", "swarm-progress");
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", text);
    box.append(bar, el("div", "progress-label", text));
    return box;
  }

  // -- a node's details ----------------------------------------------------------------------------

  function pre(value) {
    return el("pre", "", typeof value === "string" ? value : JSON.stringify(value, null, 2));
  }

  function showNode(node) {
    const panel = $("node");
    panel.replaceChildren();
    panel.append(el("h3", "", `${node.kind || "?"} ${node.name || "?"}`));
    const facts = el("dl", "facts");
    const rows = [
      ["key", node.key], ["task", node.task], ["status", node.status],
      ["attempt", node.attempt], ["created", utc(node.created_at)],
      ["started", utc(node.started_at)], ["finished", utc(node.finished_at)],
    ];
    for (const [name, value] of rows) {
      if (value === undefined || value === null || value === "") continue;
      facts.append(el("dt", "", name), el("dd", "", value));
    }
    panel.append(facts);
    if (node.error) {
      const box = el("div", "error-box");
      box.append(el("div", "error-title", `${node.error.type}: ${node.error.message}`));
      if (node.error.task) box.append(el("div", "muted", `in task ${node.error.task}`));
      if (node.error.traceback) box.append(pre(node.error.traceback));
      panel.append(el("h4", "", "error"), box);
    }
    if ("result" in node) panel.append(el("h4", "", "result"), pre(node.result));
    if (node.kwargs && Object.keys(node.kwargs).length) {
      panel.append(el("h4", "", "kwargs"), pre(node.kwargs));
    }
  }

  // -- controls ------------------------------------------------------------------------------------

  async function control(action) {
    const key = state.selected;
    if (!key) return;
    const out = $("control-result");
    out.className = "";
    out.textContent = `${action}…`;
    try {
      const path = `/api/workflows/${encodeURIComponent(key)}/${encodeURIComponent(action)}`;
      const answer = await api(path, { method: "POST" });
      out.className = "ok";
      out.textContent = `${action}: now ${answer.status}`;
      setStatus(answer.key, answer.status);
    } catch (error) {
      out.className = "error";
      out.textContent = error.message;
    }
  }

  // -- start -----------------------------------------------------------------------------------------

  function start() {
    $("forget").hidden = !token();
    loadList();
    if (state.selected) selectWorkflow(state.selected);
  }

  function init() {
    takeTokenFromFragment();
    for (const status of STATUSES.filter((s) => s !== "expired")) {
      $("f-status").append(new Option(status, status));
    }
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      loadList();
    });
    $("f-status").addEventListener("change", loadList);
    $("f-limit").addEventListener("change", loadList);
    let typing = null;
    $("f-task").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(loadList, 300);
    });
    for (const button of document.querySelectorAll(".controls button")) {
      button.addEventListener("click", () => control(button.dataset.action));
    }
    $("login-form").addEventListener("submit", useToken);
    $("forget").addEventListener("click", forgetToken);
    start();
  }

  init();
})();
