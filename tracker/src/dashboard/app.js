// The Shoal tracker dashboard: polls this tracker's read-only admin API (docs/admin-api.md)
// every two seconds and renders it. Every string from the API (file names from manifests,
// regions, ids) goes into the page as a text node (textContent), never as markup.
"use strict";

const POLL_MS = 2000;
const state = {
  swarmsAfter: "", // cursor of the swarm page shown ("" = first)
  swarmsNext: null,
  nodesAfter: "",
  nodesNext: null,
  selected: null, // content id of the swarm shown in detail
};

function el(tag, opts, children) {
  const e = document.createElement(tag);
  if (opts) {
    if (opts.text !== undefined && opts.text !== null) e.textContent = String(opts.text);
    if (opts.cls) e.className = opts.cls;
    if (opts.data) for (const [k, v] of Object.entries(opts.data)) e.dataset[k] = String(v);
    if (opts.title) e.title = String(opts.title);
  }
  for (const c of children || []) e.appendChild(c);
  return e;
}

function td(text, cls) {
  return el("td", { text: text, cls: cls });
}

// A table body's single row when there is nothing to list.
function none(table, text) {
  const cols = document.querySelectorAll("#" + table + " thead th").length;
  const cell = el("td", { cls: "empty", text: text });
  cell.colSpan = cols;
  return [el("tr", {}, [cell])];
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return (u === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[u];
}

function short(id) {
  const s = String(id);
  return s.length > 16 ? s.slice(0, 8) + "…" + s.slice(-6) : s;
}

function pct(part, whole) {
  return whole > 0 ? ((100 * part) / whole).toFixed(1) + " %" : "100 %";
}

function region(r) {
  return r === null || r === undefined ? "(none)" : r;
}

async function api(path) {
  const r = await fetch(path, { cache: "no-store", headers: { accept: "application/json" } });
  if (!r.ok) {
    let why = r.status + " " + r.statusText;
    try {
      why = (await r.json()).error || why;
    } catch (_) {
      /* keep the status line */
    }
    throw new Error(why);
  }
  return r.json();
}

function card(label, value, key) {
  return el("div", { cls: "card", data: { key: key } }, [
    el("div", { cls: "label", text: label }),
    el("div", { cls: "value", text: value }),
  ]);
}

function renderOverview(o) {
  document.getElementById("tracker-id").textContent =
    "node " + o.tracker.node_id + " · v" + o.tracker.version + " · up " + o.tracker.uptime_seconds + " s";
  document.getElementById("overview").replaceChildren(
    card("Nodes", o.nodes, "nodes"),
    card("Storage nodes", o.storage_nodes, "storage_nodes"),
    card("Swarms", o.swarms, "swarms"),
    card("Connections", o.connections, "connections"),
    card("Lookups / s", o.rates.lookups_per_second.toFixed(1), "lookups_per_second"),
    card("Announces / s", o.rates.announces_per_second.toFixed(1), "announces_per_second"),
    card("Upload rate", bytes(o.rates.upload_bytes_per_second) + "/s", "upload_bytes_per_second"),
    card("Uploads under way", o.rates.active_uploads, "active_uploads"),
    card("Stored in storage", bytes(o.storage_bytes), "storage_bytes"),
    card("Re-seed directives", o.totals.reseed_directives, "reseed_directives"),
  );
  const rows = o.regions.map((r) =>
    el("tr", { data: { region: region(r.region) } }, [
      td(region(r.region)),
      td(r.nodes, "nodes"),
      td(r.storage),
      td(r.active_uploads),
      td(bytes(r.upload_bytes_per_second) + "/s"),
    ]),
  );
  document
    .querySelector("#regions tbody")
    .replaceChildren(...(rows.length ? rows : none("regions", "No nodes registered.")));
}

function renderSwarms(page) {
  state.swarmsNext = page.next;
  document.getElementById("swarms-next").disabled = !page.next;
  const rows = page.swarms.map((s) => {
    const tr = el("tr", { cls: "selectable", data: { content: s.content } }, [
      td(s.name, "name"),
      el("td", { cls: "mono", text: short(s.content), title: s.content }),
      td(bytes(s.size)),
      td(s.pieces, "pieces"),
      td(s.holders, "holders"),
      td(s.complete_holders, "complete"),
      td(pct(s.available_pieces, s.pieces), "available"),
      td(s.min_availability, "min"),
      td(s.storage_holders > 0 ? pct(s.storage_pieces, s.pieces) : "–", "stored"),
    ]);
    if (s.content === state.selected) tr.classList.add("selected");
    tr.addEventListener("click", () => {
      state.selected = s.content;
      refresh();
    });
    return tr;
  });
  document
    .querySelector("#swarms tbody")
    .replaceChildren(...(rows.length ? rows : none("swarms", "No swarms on this page.")));
}

// Cells from white (nobody) through blue, darker with more copies (relative to the most).
function colour(n, top) {
  if (n === 0) return "rgb(255, 255, 255)";
  const t = Math.min(1, n / Math.max(1, top));
  const light = Math.round(85 - 50 * t);
  return "hsl(220, 85%, " + light + "%)";
}

function renderDetail(d) {
  const s = d.swarm;
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-name").textContent = s.name;
  document.getElementById("detail-content").textContent = s.content;
  document.getElementById("detail-summary").textContent =
    bytes(s.size) + " in " + s.pieces + " pieces · " + s.holders + " holders, " +
    s.complete_holders + " complete · " + pct(s.available_pieces, s.pieces) +
    " of pieces available · fewest copies of a piece: " + s.min_availability;
  const h = d.heatmap;
  const top = Math.max(1, ...h.max);
  document.getElementById("heatmap-legend").textContent =
    h.cells + " cells of " + h.pieces_per_cell + " piece(s) each; white: held by nobody, " +
    "darkest: " + top + " holder(s). A cell shows its least-held piece.";
  const cells = h.min.map((n, i) => {
    const c = el("div", {
      cls: "cell",
      data: { min: n, max: h.max[i] },
      title: "pieces " + i * h.pieces_per_cell + "…: " + n + " to " + h.max[i] + " holder(s)",
    });
    c.style.backgroundColor = colour(n, top);
    return c;
  });
  document.getElementById("heatmap").replaceChildren(...cells);
  const rows = d.holders.map((x) =>
    el("tr", { data: { node: x.node_id } }, [
      el("td", { cls: "mono", text: short(x.node_id), title: x.node_id }),
      td(x.storage ? "storage" : "node"),
      td(region(x.region)),
      td(x.have + " / " + s.pieces + " (" + pct(x.have, s.pieces) + ")", "have"),
      td(x.load),
    ]),
  );
  document.querySelector("#holders tbody").replaceChildren(...rows);
}

function nodeRow(r, storageTable) {
  const id = el("td", { cls: "mono", text: short(r.node_id), title: r.node_id });
  if (storageTable) {
    return el("tr", { data: { node: r.node_id } }, [
      id,
      td(region(r.region)),
      td(r.contents),
      td(r.complete_contents),
      td(bytes(r.stored_bytes), "stored"),
      td(r.active_uploads),
    ]);
  }
  return el("tr", { data: { node: r.node_id } }, [
    id,
    td(r.role),
    td(region(r.region)),
    td(r.contents),
    td(r.active_uploads),
    td(bytes(r.upload_bytes_per_second) + "/s"),
    td((r.last_seen_ms_ago / 1000).toFixed(0) + " s ago"),
  ]);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const q = (after) => (after ? "&after=" + encodeURIComponent(after) : "");
    const [overview, swarms, storage, nodes] = await Promise.all([
      api("/api/v1/overview"),
      api("/api/v1/swarms?limit=50" + q(state.swarmsAfter)),
      api("/api/v1/nodes?role=storage&limit=50"),
      api("/api/v1/nodes?limit=50" + q(state.nodesAfter)),
    ]);
    renderOverview(overview);
    // With nothing chosen, the first swarm's heatmap is shown.
    if (!state.selected && swarms.swarms.length > 0) state.selected = swarms.swarms[0].content;
    renderSwarms(swarms);
    const stores = storage.nodes.map((r) => nodeRow(r, true));
    document
      .querySelector("#storage tbody")
      .replaceChildren(...(stores.length ? stores : none("storage", "No admitted storage node registered.")));
    state.nodesNext = nodes.next;
    document.getElementById("nodes-next").disabled = !nodes.next;
    document.querySelector("#nodes tbody").replaceChildren(...nodes.nodes.map((r) => nodeRow(r, false)));
    if (state.selected) {
      try {
        renderDetail(await api("/api/v1/swarms/" + encodeURIComponent(state.selected) + "?cells=512&limit=50"));
      } catch (e) {
        // The swarm was collected: nothing to show.
        state.selected = null;
        document.getElementById("detail").hidden = true;
      }
    }
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.classList.remove("error");
  } catch (e) {
    status.textContent = "cannot reach the tracker: " + e.message;
    status.classList.add("error");
  }
}

function start() {
  document.getElementById("swarms-first").addEventListener("click", () => {
    state.swarmsAfter = "";
    refresh();
  });
  document.getElementById("swarms-next").addEventListener("click", () => {
    if (state.swarmsNext) state.swarmsAfter = state.swarmsNext;
    refresh();
  });
  document.getElementById("nodes-first").addEventListener("click", () => {
    state.nodesAfter = "";
    refresh();
  });
  document.getElementById("nodes-next").addEventListener("click", () => {
    if (state.nodesNext) state.nodesAfter = state.nodesNext;
    refresh();
  });
  refresh();
  setInterval(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
