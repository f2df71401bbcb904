// The coordinator's dashboard: project status, throughput, leaderboards, volunteers' pages and
// (with a researcher token, kept in this tab only) the researcher's batches. Everything comes
// from the coordinator's own JSON API; no external resources.
"use strict";

const view = document.getElementById("view");

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function number(value, digits = 0) {
  return Number(value ?? 0).toLocaleString("en-US", {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

async function api(path, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { headers });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body?.error?.message ?? `${path}: ${response.status}`);
  }
  return body;
}

function card(label, value, id) {
  return `<div class="card" id="${id}"><div class="value">${value}</div>` +
    `<div class="label">${esc(label)}</div></div>`;
}

// Units validated per interval as bars, with the busiest interval labelled.
function chart(series) {
  const width = 720, height = 160, buckets = series.buckets;
  const peak = Math.max(1, ...buckets.map((b) => b.units));
  const step = width / Math.max(1, buckets.length);
  const bars = buckets.map((b, i) => {
    const h = (b.units / peak) * (height - 20);
    return `<rect class="bar" data-units="${b.units}" x="${(i * step).toFixed(1)}" ` +
      `y="${(height - h).toFixed(1)}" width="${Math.max(1, step - 1).toFixed(1)}" ` +
      `height="${h.toFixed(1)}"><title>${b.units} units</title></rect>`;
  }).join("");
  const minutes = series.bucket_ms / 60000;
  return `<svg class="chart" id="throughput-chart" viewBox="0 0 ${width} ${height}" ` +
    `width="${width}" height="${height}" role="img" ` +
    `aria-label="units validated per ${minutes} minutes">` +
    `<text x="4" y="14" font-size="12">peak ${peak} units / ${minutes} min</text>${bars}</svg>`;
}

function board(title, id, page, columns) {
  const head = columns.map(([label]) => `<th>${esc(label)}</th>`).join("");
  const rows = page.entries.map((entry) => "<tr>" +
    columns.map(([, cell]) => `<td>${cell(entry)}</td>`).join("") + "</tr>").join("");
  return `<section><h3>${esc(title)}</h3><table id="${id}"><tr>${head}</tr>${rows}</table></section>`;
}

const volunteerLink = (name) => `<a href="#/volunteer/${encodeURIComponent(name)}">${esc(name)}</a>`;

async function showProject() {
  const [summary, series, volunteers, teams, hosts] = await Promise.all([
    api("/api/v1/summary"),
    api("/api/v1/throughput?hours=6"),
    api("/api/v1/leaderboard/volunteers?limit=20"),
    api("/api/v1/leaderboard/teams?limit=20"),
    api("/api/v1/leaderboard/hosts?limit=20"),
  ]);
  view.innerHTML =
    "<h2>Project status</h2><div class=\"cards\">" +
    card("volunteers active (24 h)", number(summary.volunteers_active), "volunteers-active") +
    card("hosts active (24 h)", number(summary.hosts_active), "hosts-active") +
    card("units validated", number(summary.units_validated), "units-validated") +
    card("units / s (10 min)", number(summary.units_per_second, 2), "units-per-second") +
    card("fuel / s (10 min)", number(summary.fuel_per_second), "fuel-per-second") +
    card("queue depth", number(summary.queue_depth), "queue-depth") +
    card("credit granted", number(summary.total_credit, 2), "total-credit") +
    "</div><h2>Throughput, last 6 hours</h2>" + chart(series) +
    "<h2>Leaderboards</h2><div class=\"boards\">" +
    board("Volunteers", "volunteer-board", volunteers, [
      ["#", (e) => e.rank], ["volunteer", (e) => volunteerLink(e.name)],
      ["team", (e) => esc(e.team ?? "")], ["credit", (e) => number(e.credit, 2)],
      ["recent", (e) => number(e.recent_average_credit, 2)],
    ]) +
    board("Teams", "team-board", teams, [
      ["#", (e) => e.rank], ["team", (e) => esc(e.name)], ["members", (e) => e.members],
      ["credit", (e) => number(e.credit, 2)],
    ]) +
    board("Hosts", "host-board", hosts, [
      ["#", (e) => e.rank], ["host", (e) => e.id],
      ["volunteer", (e) => volunteerLink(e.volunteer ?? "")], ["cores", (e) => e.cores],
      ["credit", (e) => number(e.credit, 2)],
    ]) + "</div>";
}

async function showVolunteer(name) {
  const [v, account] = await Promise.all([
    api(`/api/v1/volunteers/${encodeURIComponent(name)}`),
    api(`/api/v1/accounts/${encodeURIComponent(name)}`),
  ]);
  // The ledger counts fuel exactly; shown in credits, the exact fuel kept beside.
  const credits = (fuel) =>
    `<span data-fuel="${fuel}">${number(fuel / account.fuel_per_credit, 2)}</span>`;
  const hosts = v.hosts.map((h) => `<tr><td>${h.id}</td><td>${h.cores}</td>` +
    `<td>${number(h.credit, 2)}</td><td>${number(h.recent_average_credit, 2)}</td>` +
    `<td>${new Date(h.last_seen_ms).toISOString()}</td></tr>`).join("");
  view.innerHTML = `<h2 id="volunteer-name">${esc(v.name)}</h2>` +
    `<div class="cards">${card("credit", number(v.credit, 2), "volunteer-credit")}` +
    card("recent average credit", number(v.recent_average_credit, 2), "volunteer-recent") +
    card("balance", credits(account.balance), "volunteer-balance") +
    card("spent", credits(account.spent), "volunteer-spent") +
    card("rank", `${v.rank} of ${v.volunteers}`, "volunteer-rank") +
    card("team", esc(v.team ?? "none"), "volunteer-team") + "</div>" +
    "<h3>Hosts</h3><table id=\"volunteer-hosts\"><tr><th>host</th><th>cores</th>" +
    `<th>credit</th><th>recent</th><th>last seen</th></tr>${hosts}</table>`;
}

// The sign-up form: a plain form the coordinator answers with a page holding the new account's
// key and token (so it works without this script too). An invitation link fills in its code:
// `#/join?invitation=CODE`.
function showJoin(query) {
  const invitation = new URLSearchParams(query).get("invitation") ?? "";
  view.innerHTML = "<h2>Join the project</h2>" +
    "<p>An account lets your machines compute for you and keeps the credit they earn, which " +
    "you can spend on your own batches or send to another account.</p>" +
    "<form id=\"join-form\" method=\"post\" action=\"/join\">" +
    "<p><label>Name <input name=\"name\" required maxlength=\"64\"></label></p>" +
    "<p><label>Team (optional) <input name=\"team\" maxlength=\"64\"></label></p>" +
    "<p><label>Invitation code (if the project sent you one) <input name=\"invitation\" " +
    `id="invitation" value="${esc(invitation)}"></label></p>` +
    "<p><button>Create my account</button></p></form>";
}

async function showBatches() {
  const token = sessionStorage.getItem("herd-token");
  const form = "<form id=\"token-form\"><label>Researcher token <input id=\"token\" " +
    "type=\"password\" autocomplete=\"off\"></label> <button>Show my batches</button></form>";
  if (!token) {
    view.innerHTML = "<h2>My batches</h2>" + form;
  } else {
    const page = await api("/api/v1/batches?limit=1000", token);
    const rows = page.batches.map((b) => {
      const done = b.total ? (b.validated + b.failed) / b.total : 0;
      return `<tr><td>${b.id}</td><td><span class="progress"><span style="width:` +
        `${(done * 100).toFixed(1)}%"></span></span></td><td>${number(b.validated)}</td>` +
        `<td>${number(b.failed)}</td><td>${number(b.open)}</td><td>${number(b.total)}</td></tr>`;
    }).join("");
    view.innerHTML = "<h2>My batches</h2><table id=\"batches\"><tr><th>batch</th>" +
      "<th class=\"name\">progress</th><th>validated</th><th>failed</th><th>open</th>" +
      `<th>total</th></tr>${rows}</table>` + form;
  }
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("herd-token", document.getElementById("token").value.trim());
    route();
  });
}

async function route() {
  const hash = location.hash || "#/";
  try {
    if (hash.startsWith("#/volunteer/")) {
      await showVolunteer(decodeURIComponent(hash.slice("#/volunteer/".length)));
    } else if (hash === "#/join" || hash.startsWith("#/join?")) {
      showJoin(hash.slice("#/join".length));
    } else if (hash === "#/batches") {
      await showBatches();
    } else {
      await showProject();
    }
    document.body.dataset.loaded = hash;
  } catch (error) {
    view.innerHTML = `<p class="error" id="error">${esc(error.message)}</p>`;
    document.body.dataset.loaded = "error";
  }
}

window.addEventListener("hashchange", route);
route();
setInterval(() => { if ((location.hash || "#/") === "#/") route(); }, 30000);
