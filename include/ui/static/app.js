/* Connector Segments page: a single page over the JSON API (api/..., relative URLs only).
 *
 * Hash routes: #/ (the list, with ?q=&status=&source_type=&offset=), #/segments/ID (Segment
 * Details), #/segments/ID/report (Message Report). Inside Airflow's iframe the route is mirrored
 * into the top window's URL, so a reload or a shared link opens the same view. Every value
 * from the API is put in the page as text (textContent, attributes): names and descriptions
 * are user input. Times are the user's local time; the chart is drawn in the same zone.
 */
(() => {
  "use strict";

  const PAGE_SIZE = 50;
  const POLL_MS = 3000;
  const POLL_AFTER_ACTION_MS = 90000; // keep polling this long after an action was triggered
  const STATUS_FILTERS = ["Ready", "Calculating", "Failed", "Held", "Stale", "Not Active"];
  const SOURCE_TYPES = ["file", "sql", "mixpanel", "mixpanel_webhook", "amplitude"];
  const NOTICE_MS = 8000; // an information notice clears itself after this long
  const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const KINDS = { refresh: "Refresh", approve: "Approval", restore: "Restore", send: "Send Message", dry_run: "Dry run" };
  const REASONS = {
    ambiguous: "an identifier found more than one Netmera user",
    not_found: "no Netmera user has any of its identifiers",
    invalid_identifier: "its identifiers are malformed (not an email, not a phone number...)",
    no_identifier: "none of its identifier fields is filled in",
  };

  const view = document.getElementById("view");
  const crumbs = document.getElementById("crumbs");
  const notice = document.getElementById("notice");
  const modal = document.getElementById("modal");

  // -- DOM building (never innerHTML with data) ------------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function replace(node, ...children) {
    node.replaceChildren();
    return append(node, children);
  }

  // -- formatting --------------------------------------------------------------------------

  const numbers = new Intl.NumberFormat();
  const dates = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  function count(value) {
    return value === null || value === undefined ? "—" : numbers.format(value);
  }

  /** A segment's user count: "—" until it has published (0 would claim an empty audience). */
  function users(row, value) {
    return row.last_update_date ? count(value) : "—";
  }

  function percent(value) {
    return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)} %`;
  }

  const days = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
  const hours = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });

  /** A date in the user's local time (`stacked`: the time under the day); the ISO text
   * (UTC) in its title. */
  function when(iso, stacked) {
    if (!iso) return h("span", { class: "muted", text: "—" });
    const parsed = new Date(iso);
    if (Number.isNaN(parsed.getTime())) return h("span", { text: iso });
    if (stacked) {
      return h("time", { datetime: iso, title: iso, class: "stacked" },
        h("span", { class: "nowrap", text: days.format(parsed) }),
        h("span", { class: "nowrap muted small", text: hours.format(parsed) }));
    }
    return h("time", { datetime: iso, title: iso, class: "nowrap", text: dates.format(parsed) });
  }

  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

  /** "3 h ago", "in 20 min": the distance from now in the largest unit that fits. */
  function ago(iso) {
    const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
    const units = [["day", 86400], ["hour", 3600], ["minute", 60]];
    for (const [unit, size] of units) {
      if (Math.abs(seconds) >= size) return relative.format(Math.round(seconds / size), unit);
    }
    return relative.format(0, "minute");
  }

  /** "today 03:30", "tomorrow 03:30", else the date: when the next refresh is, locally. */
  function dayAndTime(iso) {
    const at = new Date(iso);
    const today = new Date();
    const tomorrow = new Date(today.getFullYear(), today.getMonth(), today.getDate() + 1);
    const sameDay = (a, b) => a.toDateString() === b.toDateString();
    if (sameDay(at, today)) return `today ${hours.format(at)}`;
    if (sameDay(at, tomorrow)) return `tomorrow ${hours.format(at)}`;
    return dates.format(at);
  }

  /** How fresh the segment is, in words: "refreshed 3 h ago · next today 03:30" (Stale:
   * "overdue since …"); the schedule in words on hover, the cron text kept for engineers. */
  function freshness(row) {
    const parts = [];
    parts.push(row.last_update_date ? `refreshed ${ago(row.last_update_date)}` : "never refreshed");
    if (row.paused) parts.push("paused: no scheduled refresh");
    else if (row.overdue_since) parts.push(`overdue since ${dayAndTime(row.overdue_since)}`);
    else if (row.next_refresh_at) parts.push(`next ${dayAndTime(row.next_refresh_at)}`);
    else if (!row.schedule) parts.push("manual refresh only");
    const title = [row.schedule_text, row.schedule ? `cron: ${row.schedule} (UTC)` : null].filter(Boolean).join(" · ");
    return h("span", { class: row.overdue_since ? "fresh overdue" : "fresh", "data-field": "freshness", title, text: parts.join(" · ") });
  }

  function slug(text) {
    return String(text).toLowerCase().replace(/[^a-z0-9]+/g, "-");
  }

  /** The badge the page shows for a segment row: Not Active (paused), Calculating, then the
   * store's Failed or Held (a stale segment that failed shows why it is stale), Stale, Ready,
   * Never run. */
  function badgeOf(row) {
    if (row.paused) return "Not Active";
    if (row.active_run && row.active_run.kind === "send") return "Sending";
    if (row.status === "Calculating" || row.active_run) return "Calculating";
    if (row.status === "Failed" || row.status === "Held") return row.status;
    if (row.stale) return "Stale";
    return row.status || "Never run";
  }

  function badge(label, known) {
    const kind = known === false ? "other" : slug(label);
    return h("span", { class: `badge badge-${kind}`, "data-status": label, text: label });
  }

  const SEND_STATUSES = ["sent", "sending", "partial", "failed"];
  const RUN_STATUSES = ["published", "calculating", "failed", "held", "dry_run", "queued", "running", "success"];

  function smallBadge(status, known) {
    return badge(status || "—", known.includes(status));
  }

  // -- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function detailText(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return JSON.stringify(detail);
  }

  /** The API's answer to `api/PATH`; an ApiError with its `{"detail"}` (or the status) when
   * it refuses. */
  async function request(path, init = {}) {
    const response = await fetch(`api/${path}`, { credentials: "same-origin", ...init });
    if (response.ok) return response;
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    const message = data && data.detail !== undefined ? detailText(data.detail)
      : `${response.status} ${response.statusText}`.trim();
    throw new ApiError(response.status, message);
  }

  async function api(path, options = {}) {
    const init = { headers: { Accept: "application/json" } };
    if (options.method) init.method = options.method;
    if (options.signal) init.signal = options.signal;
    if (options.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    return (await request(path, init)).json();
  }

  // Always a JSON body: the API refuses a cookie-authenticated POST without
  // `Content-Type: application/json`, which a cross-site form cannot send.
  const post = (path, body = {}) => api(path, { method: "POST", body });
  const segmentPath = (id) => `segments/${encodeURIComponent(id)}`;

  /** The list row of one segment (paused, stale, actions...), or null if unknown. */
  async function listRow(id) {
    const found = await api(`segments?${new URLSearchParams({ id })}`);
    return found.segments.find((s) => s.id === id) || null;
  }

  /** `api(path)`, or null after saying why not (for a modal that needs it to open). */
  async function apiOrSay(path) {
    try {
      return await api(path);
    } catch (error) {
      say(error.message, true);
      return null;
    }
  }

  // -- notices, modals, polling ------------------------------------------------------------

  let noticeTimer = null;

  /** A notice above the view: an error stays until dismissed or the view changes; an
   * information clears itself after NOTICE_MS. */
  function say(message, isError) {
    clearTimeout(noticeTimer);
    if (!isError) noticeTimer = setTimeout(clearNotice, NOTICE_MS);
    notice.hidden = false;
    notice.className = isError ? "notice error" : "notice";
    replace(
      notice,
      h("span", { "data-role": "message", text: message }),
      h("button", { type: "button", "aria-label": "Dismiss", text: "×", onclick: clearNotice }),
    );
  }

  function clearNotice() {
    clearTimeout(noticeTimer);
    notice.hidden = true;
    notice.replaceChildren();
  }

  function closeModal() {
    modal.hidden = true;
    modal.replaceChildren();
  }

  function openModal(title, ...body) {
    const box = h("div", { class: "modal", role: "dialog", "aria-modal": "true", "aria-label": title },
      h("h2", { text: title }), body);
    replace(modal, box);
    modal.hidden = false;
    return box;
  }

  modal.addEventListener("click", (event) => { if (event.target === modal) closeModal(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeModal(); });

  let generation = 0; // bumped on every route change: stale timers and fetches stop
  let pollUntil = 0;

  function schedule(gen, again, reload) {
    if (gen !== generation) return;
    if (again || Date.now() < pollUntil) setTimeout(() => { if (gen === generation) reload(); }, POLL_MS);
  }

  function started(what, answer) {
    pollUntil = Date.now() + POLL_AFTER_ACTION_MS;
    say(`${what} started (run ${answer.dag_run_id})`);
  }

  // -- actions -----------------------------------------------------------------------------

  const NO_TRIGGER = "You may look at this segment but not act on it (your Airflow role cannot trigger its DAG)";

  function whyNot(row, action) {
    if (row.may_trigger === false) return NO_TRIGGER;
    if (!row.dag_id || row.paused === null) return "Airflow does not know this segment's DAG yet";
    if (row.paused) return "Its DAG is paused (Not Active): unpause it in Airflow first";
    if (row.active_run || row.status === "Calculating") return "A run is in progress";
    if (action === "send") return "Send Message needs a Ready segment with a published version";
    if (action === "approve") return "Only a Held refresh can be approved";
    if (action === "restore") return "No earlier version is kept";
    return "Not allowed now";
  }

  function actionButton(row, action, label, onclick, primary) {
    const allowed = (row.actions || []).includes(action);
    return h("button", {
      type: "button",
      class: primary ? "primary" : null,
      "data-action": action,
      disabled: !allowed,
      title: allowed ? null : whyNot(row, action),
      text: label,
      onclick: () => onclick(row),
    });
  }

  async function refresh(row, after) {
    try {
      started("Refresh", await post(`${segmentPath(row.id)}/refresh`));
      after(row.id);
    } catch (error) {
      say(error.message, true);
    }
  }

  /** A modal form whose confirm button runs `onconfirm`: disabled meanwhile, the modal
   * closed when it succeeds, the API's refusal shown in the modal otherwise (the user may
   * change the form and confirm again). */
  function confirmBox(title, body, label, onconfirm, action = "confirm") {
    const problem = h("p", { class: "error", role: "alert", hidden: true });
    const button = h("button", { type: "submit", class: "primary", "data-action": action, text: label });
    const form = h("form", {}, body, problem,
      h("div", { class: "buttons" }, h("button", { type: "button", text: "Cancel", onclick: closeModal }), button));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      try {
        await onconfirm();
        closeModal();
      } catch (error) {
        problem.hidden = false;
        problem.textContent = error.message;
        button.disabled = false;
      }
    });
    openModal(title, form);
    return button;
  }

  const REACHABLE_NOTE = "Recipients are the members Netmera's REST API can address (those with an extId). " +
    "Reachable, on the segment's page, counts members with a device that accepts push: Netmera delivers only to those, " +
    "so the delivered count in Message Report is at most Reachable.";

  async function sendMessage(row, after) {
    const path = `${segmentPath(row.id)}/campaign`;
    const campaign = await apiOrSay(path);
    if (!campaign) return;
    // The API's limits (longer is refused with 422).
    const title = h("input", { type: "text", name: "title", required: true, maxlength: 500 });
    title.value = campaign.title || "";
    const text = h("textarea", { name: "text", required: true, maxlength: 5000 });
    text.value = campaign.text || "";
    const holdout = h("input", { type: "number", name: "holdout_percent", min: 0, max: 50, step: "any", required: true, class: "short" });
    holdout.value = campaign.holdout_percent || 0;
    const to = h("select", { name: "audience" },
      h("option", { value: "all", text: "Every member of this version" }),
      h("option", { value: "entered", text: "Only those who entered since this message was last sent" }));
    to.value = campaign.audience || "all";
    const field = (name, value) => h("strong", { "data-field": name, text: count(value) });
    const split = h("div", { class: "summary", "data-role": "split" });
    const confirm = { label: null };
    function showSplit(figures) {
      const since = figures.since_version;
      replace(split,
        h("div", {}, "Members: ", field("members", figures.members ?? (figures.recipients + figures.not_addressable)),
          to.value === "entered" ? h("span", { class: "muted small", "data-role": "since",
            text: since ? ` (those who entered after version ${since}, the last this message was sent to)` : " (all: this message was never sent)" }) : null),
        h("div", {}, "Recipients: ", field("recipients", figures.recipients),
          h("span", { class: "muted small", text: " (messaged)" })),
        h("div", {}, "Holdout: ", field("holdout", figures.holdout || 0),
          h("span", { class: "muted small", text: ` (${numbers.format(Number(holdout.value) || 0)} % of the addressable members, chosen at random but fixed for this message and version; recorded, never messaged, to measure the campaign's lift)` })),
        h("div", {}, "Not addressable: ", field("not_addressable", figures.not_addressable),
          h("span", { class: "muted small", text: " (matched users without an extId: Netmera's REST API cannot reach them)" })),
        figures.resumes ? h("p", { class: "small", "data-role": "resumes",
          text: `This message's earlier send to this version failed: confirming resumes it, with the holdout it drew then (${numbers.format(figures.resumes.holdout_percent)} %).` }) : null,
        h("p", { class: "muted small", "data-role": "reachable-note", text: `${REACHABLE_NOTE} This segment: Reachable ${count(row.reachable)}.` }));
      if (confirm.button) confirm.button.textContent = `Send to ${count(figures.recipients)} users`;
    }
    showSplit(campaign);
    let asking = null; // the split being asked for: aborted when the form changes again
    async function resplit() {
      const percent = Number(holdout.value);
      if (!holdout.checkValidity() || Number.isNaN(percent)) return;
      if (asking) asking.abort();
      const mine = asking = new AbortController();
      try {
        // Which members are held out depends on the message too: ask with the form's.
        const query = new URLSearchParams({ holdout_percent: percent, title: title.value, text: text.value, audience: to.value });
        const figures = await api(`${path}?${query}`, { signal: mine.signal });
        if (mine === asking) showSplit(figures);
      } catch (error) {
        if (mine === asking && error.name !== "AbortError") replace(split, h("p", { class: "error", text: error.message }));
      }
    }
    let timer = null;
    const later = () => { clearTimeout(timer); timer = setTimeout(resplit, 400); };
    holdout.addEventListener("input", later);
    to.addEventListener("change", resplit);
    // The message changes the draw only when someone is held out, and who entered since it
    // was last sent.
    for (const input of [title, text]) input.addEventListener("input", () => { if (Number(holdout.value) || to.value === "entered") later(); });
    const body = [
      h("p", { class: "muted" }, "To the members of ", h("strong", { text: row.name }),
        ` (version ${campaign.version}), on ${(campaign.platforms || []).join(" and ") || "every platform"}.`),
      h("label", { text: "Title" }), title,
      h("label", { text: "Message" }), text,
      h("label", { text: "To" }), to,
      h("label", { text: "Holdout group (% of the addressable members not messaged, 0–50)" }), holdout,
      split,
    ];
    confirm.button = confirmBox(`Send Message: ${row.name}`, body, `Send to ${count(campaign.recipients)} users`, async () => {
      const answer = await post(`${segmentPath(row.id)}/send`,
        { title: title.value, text: text.value, holdout_percent: Number(holdout.value) || 0, audience: to.value });
      started("Send Message", answer);
      after(row.id, "send");
    }, "confirm-send");
    if (Number(holdout.value) || to.value === "entered") resplit();
    title.focus();
  }

  async function approve(row, after) {
    const details = await apiOrSay(segmentPath(row.id));
    if (!details) return;
    const held = (details.runs || []).find((r) => r.status === "held");
    const body = held ? h("div", {},
      h("div", { class: "reason held", "data-field": "hold_reason", text: held.hold_reason || "Held by a guardrail" }),
      h("dl", { class: "kv" },
        h("dt", { text: "Netmera Users" }), h("dd", {}, `${count(details.netmera_users)} now → `,
          h("strong", { text: count(held.netmera_users) }), " after approval"),
        h("dt", { text: "Added" }), h("dd", { class: "plus", "data-field": "added", text: count(held.added) }),
        h("dt", { text: "Removed" }), h("dd", { class: "minus", "data-field": "removed", text: count(held.removed) }),
        h("dt", { text: "Connector Users" }), h("dd", { text: count(held.connector_users) })),
      validationBlock(held.validation),
      h("p", { class: "muted small", text: "Approving extracts again and publishes if the figures are no worse than these." }))
      : h("p", { text: "No held refresh found in the recent runs." });
    confirmBox(`Approve the held refresh: ${row.name}`, body, "Approve and publish", async () => {
      started("Approve", await post(`${segmentPath(row.id)}/approve`));
      after(row.id);
    });
  }

  function restore(row, version, after) {
    const body = h("div", {},
      h("p", {}, "Make ", h("strong", { text: `version ${version.version}` }),
        ` (published ${version.published_at ? dates.format(new Date(version.published_at)) : "—"}) the current membership again?`),
      h("dl", { class: "kv" },
        h("dt", { text: "Netmera Users" }), h("dd", {}, `${count(row.netmera_users)} now → `,
          h("strong", { text: count(version.netmera_users) })),
        h("dt", { text: "Connector Users" }), h("dd", { text: count(version.connector_users) }),
        h("dt", { text: "Reachable" }), h("dd", { text: count(version.reachable) })),
      h("p", { class: "muted small", text: "It runs as a DAG run of the segment, recorded with what it added and removed." }));
    confirmBox(`Restore: ${row.name}`, body, `Restore version ${version.version}`, async () => {
      started("Restore", await post(`${segmentPath(row.id)}/restore`, { version: version.version }));
      after(row.id);
    });
  }

  // -- the list ----------------------------------------------------------------------------

  // Ids acted upon: shown Calculating until the API shows the run (or for a few seconds).
  const pending = new Map();
  const PENDING_MS = 10000;
  const markPending = (id, action) => {
    pending.set(id, Date.now() + PENDING_MS);
    if (action === "send") pending.set(`${id}:send`, true);
    else pending.delete(`${id}:send`);
  };

  function listState() {
    const query = new URLSearchParams(location.hash.split("?")[1] || "");
    return {
      q: query.get("q") || "",
      status: query.get("status") || "",
      source_type: query.get("source_type") || "",
      offset: Math.max(0, parseInt(query.get("offset") || "0", 10) || 0),
    };
  }

  function keepListState(state) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(state)) if (value) query.set(key, value);
    const text = query.toString();
    history.replaceState(null, "", text ? `#/?${text}` : "#/");
    mirrorRoute();
  }

  function select(name, label, options, value) {
    const node = h("select", { name, "aria-label": label },
      h("option", { value: "", text: label }),
      options.map((o) => h("option", { value: o, text: o })));
    node.value = value;
    return node;
  }

  function renderList() {
    const gen = generation;
    const state = listState();
    setCrumbs();
    const search = h("input", { type: "search", name: "q", placeholder: "Search segments by name or id", value: state.q });
    const status = select("status", "All statuses", STATUS_FILTERS, state.status);
    const source = select("source_type", "All sources", SOURCE_TYPES, state.source_type);
    const body = h("tbody");
    const range = h("span", { class: "muted", "data-role": "range" });
    const prev = h("button", { type: "button", "data-action": "prev", text: "‹ Previous" });
    const next = h("button", { type: "button", "data-action": "next", text: "Next ›" });
    const table = h("table", { class: "segments" },
      h("thead", {}, h("tr", {},
        h("th", { text: "Segment Name" }), h("th", { class: "num", text: "Connector Users" }),
        h("th", { class: "num", text: "Netmera Users" }), h("th", { class: "num", text: "Message Sent" }),
        h("th", { text: "Description" }), h("th", { text: "Last Update Date" }),
        h("th", { text: "Status" }), h("th", { text: "Actions" }))),
      body);
    replace(view,
      h("div", { class: "toolbar" }, search, status, source, h("span", { class: "grow" })),
      h("div", { class: "card flush" }, table, h("div", { class: "pager" }, range, h("div", { class: "actions" }, prev, next))));

    let timer = null;
    const reload = () => load(gen);
    const changed = () => {
      state.q = search.value.trim();
      state.status = status.value;
      state.source_type = source.value;
      state.offset = 0;
      keepListState(state);
      reload();
    };
    search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(changed, 300); });
    status.addEventListener("change", changed);
    source.addEventListener("change", changed);
    prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); keepListState(state); reload(); });
    next.addEventListener("click", () => { state.offset += PAGE_SIZE; keepListState(state); reload(); });

    const after = (id, action) => { markPending(id, action); reload(); };
    let loading = 0;

    async function load() {
      const mine = ++loading;
      const query = new URLSearchParams({ limit: PAGE_SIZE, offset: state.offset });
      for (const key of ["q", "status", "source_type"]) if (state[key]) query.set(key, state[key]);
      let page;
      try {
        page = await api(`segments?${query}`);
      } catch (error) {
        if (gen === generation && mine === loading) {
          replace(body, h("tr", {}, h("td", { colspan: 8, class: "empty", text: error.message })));
          say(error.message, true);
        }
        return;
      }
      if (gen !== generation || mine !== loading) return;
      for (const row of page.segments) if (row.active_run || row.status === "Calculating") pending.delete(row.id);
      const rows = page.segments.map((row) => segmentRow(row, after));
      replace(body, rows.length ? rows : h("tr", {}, h("td", { colspan: 8, class: "empty",
        text: state.q || state.status || state.source_type ? "No segment matches these filters." : "No segment yet: add a YAML file to the segments folder." })));
      const first = page.total ? state.offset + 1 : 0;
      const last = Math.min(state.offset + page.segments.length, page.total);
      range.textContent = `${numbers.format(first)}–${numbers.format(last)} of ${numbers.format(page.total)}`;
      prev.disabled = state.offset === 0;
      next.disabled = last >= page.total;
      const calculating = page.segments.some((row) => ["Calculating", "Sending"].includes(shownBadge(row)));
      schedule(gen, calculating, reload);
    }
    load();
  }

  function shownBadge(row) {
    const label = badgeOf(row);
    if ((pending.get(row.id) || 0) <= Date.now() || ["Not Active", "Sending"].includes(label)) return label;
    return pending.get(`${row.id}:send`) ? "Sending" : "Calculating";
  }

  function segmentRow(row, after) {
    const report = h("button", { type: "button", "data-action": "report", text: "Message Report",
      onclick: () => { location.hash = `#/segments/${encodeURIComponent(row.id)}/report`; } });
    const extra = [];
    if (row.status === "Held" || row.actions.includes("approve")) {
      extra.push(actionButton(row, "approve", "Approve", (r) => approve(r, after), row.actions.includes("approve")));
    }
    if (row.actions.includes("restore")) {
      extra.push(h("button", { type: "button", "data-action": "restore", text: "Restore",
        title: "Choose a kept version in Segment Details",
        onclick: () => { location.hash = `#/segments/${encodeURIComponent(row.id)}?versions`; } }));
    }
    const label = shownBadge(row);
    const reason = ["Failed", "Held", "Stale", "Not Active"].includes(label) ? row.status_reason : null;
    return h("tr", { "data-id": row.id },
      h("td", { class: "name" },
        h("a", { href: `#/segments/${encodeURIComponent(row.id)}`, "data-field": "name", text: row.name }),
        h("div", { class: "muted small", text: `${row.id} · ${row.source_type}` }),
        h("div", { class: "muted small" }, freshness(row))),
      h("td", { class: "num", "data-field": "connector_users", text: users(row, row.connector_users) }),
      h("td", { class: "num", "data-field": "netmera_users", text: users(row, row.netmera_users) }),
      h("td", { class: "num", "data-field": "message_sent", text: count(row.message_sent) }),
      h("td", { class: "desc", title: row.description }, h("div", { class: "clamp", text: row.description })),
      h("td", { class: "date", "data-field": "last_update_date" }, when(row.last_update_date, true)),
      h("td", { class: "status", "data-field": "status" }, badge(label),
        reason ? h("div", { class: "status-reason small clamp", "data-field": "status_reason", title: reason, text: reason }) : null),
      h("td", {}, h("div", { class: "actions" },
        actionButton(row, "send", "Send Message", (r) => sendMessage(r, after)),
        report,
        actionButton(row, "refresh", "Refresh", (r) => refresh(r, after)),
        extra)));
  }

  // -- Segment Details ---------------------------------------------------------------------

  function setCrumbs(row, last) {
    const parts = [h("a", { href: "#/", text: "Connector Segments" })];
    if (row) {
      parts.push(h("span", { class: "sep", text: "/" }));
      parts.push(last ? h("a", { href: `#/segments/${encodeURIComponent(row.id)}`, text: row.name })
        : h("span", { class: "here", text: row.name }));
    }
    if (last) parts.push(h("span", { class: "sep", text: "/" }), h("span", { class: "here", text: last }));
    replace(crumbs, parts);
  }

  function airflow(path) {
    // Airflow's own pages, from inside the iframe: relative, so a sub-path works.
    return `../dags/${path}`;
  }

  /** Open an Airflow page in the whole window. The UI's iframe is sandboxed without
   * allow-top-navigation, so a target=_top link cannot leave it; the frame is same-origin,
   * so it hands the URL to the UI's router (history + popstate), as the UI's own links do. */
  function openTop(event) {
    const link = event.currentTarget;
    try {
      const top = window.top;
      if (top === window || top.location.origin !== location.origin) return;
      event.preventDefault();
      const url = new URL(link.href);
      const index = (top.history.state && top.history.state.idx) || 0;
      top.history.pushState({ usr: null, key: "cs", idx: index + 1 }, "", url.pathname + url.search + url.hash);
      top.dispatchEvent(new PopStateEvent("popstate", { state: top.history.state }));
    } catch (_) {
      // another origin: leave it to the link
    }
  }

  function airflowLink(path, text, attrs) {
    return h("a", { ...attrs, href: airflow(path), target: "_top", text, onclick: openTop });
  }

  function runPath(dagId, run) {
    return `${encodeURIComponent(dagId)}/runs/${encodeURIComponent(run.airflow_run_id)}`;
  }

  /** The run in Airflow, the log of the task that explains it (the failed one; a restore's
   * `restore`), and the logs of the other tasks that ran (skipped ones have none). */
  function runLinks(dagId, run) {
    if (!dagId || !run || !run.airflow_run_id) return null;
    const base = runPath(dagId, run);
    // Airflow's tasks of the run (none listed: a run Airflow no longer knows, whose tasks
    // depend on the layout it ran with).
    const ran = (run.tasks || [])
      .filter((t) => t.state && !["skipped", "removed", "upstream_failed"].includes(t.state)).map((t) => t.task_id);
    return h("div", { class: "links" },
      airflowLink(base, "Open the DAG run in Airflow", { "data-link": "dag-run" }),
      run.log_task ? airflowLink(`${base}/tasks/${encodeURIComponent(run.log_task)}`, `Log of ${run.log_task}`,
        { "data-link": "log", class: run.status === "failed" ? "failed-step" : null }) : null,
      ran.filter((t) => t !== run.log_task).length ? h("span", { class: "muted", text: "Other task logs:" }) : null,
      ran.filter((t) => t !== run.log_task).map((task) => airflowLink(`${base}/tasks/${encodeURIComponent(task)}`, task, {
        "data-link": `task-${task}`,
      })));
  }

  /** What a run did and how it ended, in words: its kind, Airflow's state when the store has
   * no word for it, and who started it. */
  function runTitle(run) {
    const kind = KINDS[run.kind] || "Run";
    const by = run.triggered_by && !["scheduled", "manual"].includes(run.triggered_by) ? ` by ${run.triggered_by}` : "";
    return `${kind}${by}`;
  }

  function runNote(run) {
    if (run.status === "failed") return `${run.failed_step ? `${run.failed_step}: ` : ""}${run.error || "failed"}`;
    if (run.hold_reason) return run.status === "held" ? run.hold_reason : `approved past: ${run.hold_reason}`;
    if (run.restored_from) return `restored from v${run.restored_from}`;
    if (run.status === "queued" || run.status === "running") return `Airflow: ${run.status}`;
    return "";
  }

  function stat(label, value, field) {
    const node = value instanceof Node ? value : document.createTextNode(value);
    return h("div", { class: "stat" }, h("div", { class: "label", text: label }),
      h("div", { class: value instanceof Node ? "value small-value" : "value", "data-field": field }, node));
  }

  function validationBlock(validation) {
    if (!validation) return null;
    const ratio = (part) => part && part.statistics
      ? `${part.statistics.successful_expectations}/${part.statistics.evaluated_expectations} passed` : "—";
    const checks = [...((validation.data || {}).results || []), ...((validation.guardrails || {}).results || [])];
    const figures = validation.counts || {};
    return h("div", { class: "stack", "data-role": "validation" },
      h("p", {}, "Validation: ", h("strong", { text: validation.outcome || "—" }),
        h("span", { class: "muted", text: ` (data ${ratio(validation.data)}, guardrails ${ratio(validation.guardrails)})` })),
      h("p", { class: "small" }, `Match rate ${percent(figures.match_rate)} · shrink ${percent(figures.shrink)} · growth ${percent(figures.growth)}`),
      checks.length ? h("ul", { class: "small" }, checks.map((c) => h("li", {},
        h("span", { class: c.success ? "check-ok" : "check-bad", text: c.success ? "✓ " : "✗ " }),
        c.check || c.expectation))) : null);
  }

  function explanation(d) {
    const matched = d.matched_source_users;
    if (matched === null || matched === undefined) {
      return h("p", { class: "explain muted", text: "No published version yet: the counts are explained after the first publish." });
    }
    const unmatched = Math.max(0, d.connector_users - matched);
    const shared = Math.max(0, matched - d.netmera_users);
    const byKind = Object.entries(d.matched_by || {}).map(([k, n]) => `${k} ${count(n)}`).join(", ");
    const parts = [
      `Of ${count(d.connector_users)} source users (Connector Users), ${count(matched)} matched a Netmera user`,
      byKind ? ` (by ${byKind})` : "",
      ` and ${count(unmatched)} did not (reasons below). `,
    ];
    if (shared > 0) {
      parts.push(`Several source users can be one Netmera user, so those ${count(matched)} are ${count(d.netmera_users)} distinct Netmera users (Netmera Users). `);
    } else {
      parts.push(`They are ${count(d.netmera_users)} distinct Netmera users (Netmera Users). `);
    }
    if (d.reachable !== null && d.reachable !== undefined) {
      parts.push(`${count(d.reachable)} of them have a device that accepts push (Reachable).`);
    }
    if (d.refused_rows) parts.push(` ${count(d.refused_rows)} source rows had no user key and were left out before matching.`);
    return h("p", { class: "explain", "data-role": "explanation", text: parts.join("") });
  }

  function countsTables(d) {
    const matchedTotal = Object.values(d.matched_by || {}).reduce((a, b) => a + b, 0);
    const matchedRows = Object.entries(d.matched_by || {}).map(([kind, n]) => h("tr", { "data-kind": kind },
      h("td", { text: kind }), h("td", { class: "num", text: count(n) }),
      h("td", { class: "num muted", text: matchedTotal ? percent(n / matchedTotal) : "—" })));
    const reasonRows = Object.entries(d.reasons || {}).map(([reason, n]) => h("tr", { "data-reason": reason },
      h("td", { text: reason.replace(/_/g, " ") }), h("td", { class: "num", text: count(n) }),
      h("td", { class: "muted small", text: REASONS[reason] || "" })));
    return h("div", { class: "grid2" },
      h("div", { class: "card flush" }, h("table", { "data-role": "matched-by" },
        h("thead", {}, h("tr", {}, h("th", { text: "Matched by" }), h("th", { class: "num", text: "Source users" }), h("th", { class: "num", text: "Share" }))),
        h("tbody", {}, matchedRows.length ? matchedRows : h("tr", {}, h("td", { colspan: 3, class: "empty", text: "Nothing matched." }))))),
      h("div", { class: "card flush" }, h("table", { "data-role": "unmatched" },
        h("thead", {}, h("tr", {}, h("th", { text: "Not matched because" }), h("th", { class: "num", text: "Source users" }), h("th", { text: "Meaning" }))),
        h("tbody", {}, reasonRows.length ? reasonRows : h("tr", {}, h("td", { colspan: 3, class: "empty", text: "Every source user matched." }))))));
  }

  function unmatchedLink(id, run, text) {
    const query = run ? `?${new URLSearchParams({ run })}` : "";
    return h("a", { class: "button", href: `api/${segmentPath(id)}/unmatched.csv${query}`,
      download: `${id}-unmatched.csv`, "data-link": run ? "run-unmatched-csv" : "unmatched-csv", text });
  }

  /** Each finished step's duration, in the order the run took them. */
  function stepTimes(run) {
    const steps = Object.entries(run.step_seconds || {});
    if (!steps.length) return null;
    const seconds = (s) => (s < 10 ? s.toFixed(1) : Math.round(s).toLocaleString());
    return [h("dt", { text: "Steps" }), h("dd", { "data-field": "step_seconds",
      text: steps.map(([step, s]) => `${step} ${seconds(s)} s`).join(" · ") })];
  }

  function lastRunCard(d) {
    const run = (d.runs || [])[0];
    if (!run) return null;
    const note = run.status === "failed"
      ? h("div", { class: "reason failed", "data-field": "error" }, `Failed${run.failed_step ? ` in ${run.failed_step}` : ""}: `, run.error || "no error recorded")
      : run.status === "held" ? h("div", { class: "reason held", "data-field": "hold_reason", text: `Held: ${run.hold_reason || "a guardrail tripped"}` })
        : null;
    const matched = run.connector_users !== null && run.connector_users !== undefined;
    const ownUnmatched = matched && run.airflow_run_id !== d.unmatched_run && run.kind !== "restore"
      ? h("div", { class: "actions" }, unmatchedLink(d.id, run.airflow_run_id, "This run's unmatched source users (CSV)")) : null;
    return h("div", { class: "card", "data-role": "last-run" },
      h("h2", {}, `Last run: ${runTitle(run)} `, smallBadge(run.status, RUN_STATUSES), run.dry_run ? h("span", { class: "tag", text: "dry run" }) : null,
        run.approve ? h("span", { class: "tag", text: "approval" }) : null),
      h("dl", { class: "kv" },
        h("dt", { text: "Run" }), h("dd", { class: "small", text: run.airflow_run_id }),
        run.airflow_state ? [h("dt", { text: "Airflow state" }), h("dd", { "data-field": "airflow_state", text: run.airflow_state })] : null,
        h("dt", { text: "Started" }), h("dd", {}, when(run.started_at)),
        h("dt", { text: "Finished" }), h("dd", {}, when(run.finished_at)),
        stepTimes(run),
        matched ? [h("dt", { text: "Counts" }), h("dd", { text: `Connector ${count(run.connector_users)} → matched ${count(run.matched_source_users)} → Netmera ${count(run.netmera_users)} (reachable ${count(run.reachable)})` })] : null,
        run.mode ? [h("dt", { text: "Matching" }), h("dd", { "data-field": "mode",
          text: `${run.mode === "incremental" ? "Incremental" : "Full"}: ${count(run.rematched)} source users matched again` })] : null,
        run.version || run.added !== null && run.added !== undefined ? [h("dt", { text: "Changes" }), h("dd", {},
          h("span", { class: "plus", "data-field": "added", text: `+${count(run.added)} added` }), ", ",
          h("span", { class: "minus", "data-field": "removed", text: `−${count(run.removed)} removed` }),
          run.version ? ` (version ${run.version}${run.base_version ? ` vs ${run.base_version}` : ""})` : "",
          run.restored_from ? ` · restored from version ${run.restored_from}` : "")] : null),
      note,
      validationBlock(run.validation),
      ownUnmatched,
      runLinks(d.dag_id, run));
  }

  function versionsCard(d, row, after) {
    const versions = d.versions || [];
    const rows = versions.map((v) => {
      const allowed = v.restorable && (d.actions || []).includes("restore");
      return h("tr", { "data-version": v.version },
        h("td", {}, `v${v.version}`, v.current ? h("span", { class: "tag", text: "current" }) : null),
        h("td", {}, when(v.published_at)),
        h("td", { class: "num", text: count(v.connector_users) }),
        h("td", { class: "num", text: count(v.netmera_users) }),
        h("td", { class: "num", text: count(v.reachable) }),
        h("td", { class: "num" }, h("span", { class: "plus", text: `+${count(v.added)}` }), " ", h("span", { class: "minus", text: `−${count(v.removed)}` })),
        h("td", { class: "muted small", text: v.restored_from ? `restored from v${v.restored_from}` : "" }),
        h("td", {}, v.current ? null : h("button", {
          type: "button", "data-action": "restore", disabled: !allowed,
          title: allowed ? null : v.restorable ? whyNot(row, "restore") : "This version is no longer kept",
          text: "Restore", onclick: () => restore(row, v, after),
        })));
    });
    // 30 versions are kept: the newest few show, the rest one click away.
    const SHOWN = 5;
    const more = rows.length > SHOWN ? h("tr", { "data-role": "more-versions" }, h("td", { colspan: 8 },
      h("button", { type: "button", class: "link", text: `Show all ${rows.length} kept versions`, onclick: (event) => {
        rows.slice(SHOWN).forEach((r) => { r.hidden = false; });
        event.target.closest("tr").remove();
      } }))) : null;
    rows.slice(SHOWN).forEach((r) => { r.hidden = true; });
    return h("div", { class: "card flush", id: "versions", "data-role": "versions" },
      h("table", {},
        h("thead", {}, h("tr", {}, h("th", { text: "Kept version" }), h("th", { text: "Published" }),
          h("th", { class: "num", text: "Connector" }), h("th", { class: "num", text: "Netmera" }),
          h("th", { class: "num", text: "Reachable" }), h("th", { class: "num", text: "Added / removed" }),
          h("th", { text: "" }), h("th", { text: "" }))),
        h("tbody", {}, rows.length ? [rows, more] : h("tr", {}, h("td", { colspan: 8, class: "empty", text: "No version published yet." })))));
  }

  function runsTable(d) {
    const rows = (d.runs || []).map((r) => {
      const run = d.dag_id ? airflowLink(runPath(d.dag_id, r), r.airflow_run_id, { "data-link": "run" }) : r.airflow_run_id;
      const log = d.dag_id && r.log_task
        ? airflowLink(`${runPath(d.dag_id, r)}/tasks/${encodeURIComponent(r.log_task)}`, `log of ${r.log_task}`, { "data-link": "log" }) : null;
      const note = runNote(r);
      return h("tr", { "data-run": r.airflow_run_id, "data-status": r.status },
        h("td", {}, when(r.started_at)),
        h("td", {}, h("div", { text: runTitle(r) }), h("div", { class: "small ellipsis" }, run)),
        h("td", {}, smallBadge(r.status, RUN_STATUSES)),
        h("td", { class: "num", text: r.version ? `v${r.version}` : "—" }),
        h("td", { class: "num", text: count(r.connector_users) }),
        h("td", { class: "num", text: count(r.netmera_users) }),
        h("td", { class: "num" }, r.added === null || r.added === undefined ? "—" : [
          h("span", { class: "plus", text: `+${count(r.added)}` }), " ", h("span", { class: "minus", text: `−${count(r.removed)}` }),
          r.status === "published" && r.version ? h("div", { class: "small" }, h("a", {
            href: `api/${segmentPath(d.id)}/runs/${encodeURIComponent(r.airflow_run_id)}/changes.csv`,
            download: `${d.id}-v${r.version}-changes.csv`, "data-link": "changes-csv", title: "Who this run added and removed (CSV)", text: "who (CSV)" })) : null]),
        h("td", { class: r.status === "failed" ? "note failed" : "note", "data-field": "note" },
          h("div", { class: "clamp", title: note, text: note }), log));
    });
    return h("div", { class: "card flush", "data-role": "runs" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Started", "Run", "Status", "Version", "Connector", "Netmera", "Added / removed", "What happened"]
        .map((t, i) => h("th", { class: i >= 3 && i <= 6 ? "num" : null, text: t })))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 8, class: "empty", text: "No run yet." })))));
  }

  async function loadChart(holder, id, gen) {
    try {
      const response = await request(`${segmentPath(id)}/chart.svg?${new URLSearchParams({ tz: ZONE })}`);
      // Inline (not <img>) so the points' <title> tooltips work; parsed as XML, never as HTML.
      const doc = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
      const svg = doc.documentElement;
      if (gen !== generation || svg.nodeName !== "svg") return;
      replace(holder, document.importNode(svg, true));
    } catch (error) {
      replace(holder, h("p", { class: "muted", text: `The chart could not be loaded (${error.message}).` }));
    }
  }

  async function renderDetails(id, focusVersions) {
    const gen = generation;
    const reload = () => { if (gen === generation) renderDetails(id, false); };
    const after = (_, action) => { markPending(id, action); reload(); };
    let d;
    let row;
    try {
      [d, row] = await Promise.all([api(segmentPath(id)).catch((e) => e), listRow(id)]);
    } catch (error) {
      if (gen === generation) replace(view, h("p", { class: "notice error", text: error.message }));
      return;
    }
    if (gen !== generation) return;
    if (!row) {
      setCrumbs({ id, name: id });
      replace(view, h("div", { class: "card empty", text: d instanceof Error ? d.message : `unknown segment ${id}` }));
      return;
    }
    setCrumbs(row);
    if (!(d instanceof Error)) {
      d.dag_id = d.dag_id || row.dag_id; // the list row knows them too
      d.actions = d.actions || row.actions;
    }
    if (row.active_run || row.status === "Calculating") pending.delete(id);
    const label = shownBadge(row);
    const head = h("div", { class: "page-head" },
      h("div", {},
        h("div", { class: "title" }, h("h1", { "data-field": "name", text: row.name }), badge(label)),
        h("div", { class: "sub", text: row.description }),
        h("div", { class: "sub small" }, `${row.id} · source ${row.source_type} · `, freshness(row))),
      h("div", { class: "actions" },
        actionButton(row, "send", "Send Message", (r) => sendMessage(r, after), true),
        h("a", { class: "button", href: `#/segments/${encodeURIComponent(id)}/report`, text: "Message Report" }),
        actionButton(row, "refresh", "Refresh", (r) => refresh(r, after)),
        row.status === "Held" ? actionButton(row, "approve", "Approve", (r) => approve(r, after)) : null,
        row.dag_id ? airflowLink(encodeURIComponent(row.dag_id), "Open in Airflow", { class: "button", "data-link": "dag" }) : null));
    const reason = ["Failed", "Held", "Stale", "Not Active"].includes(label) && row.status_reason
      ? h("div", { class: `reason ${slug(label)}`, "data-field": "status_reason", text: row.status_reason }) : null;
    if (d instanceof Error) {
      // Only a 404 means "never ran"; a refusal (401, 403) or a failure says what the API said.
      const problem = d.status === 404
        ? h("div", { class: "card empty", "data-role": "never-ran", text: `${d.message}. Press Refresh to run it.` })
        : h("div", { class: "notice error", "data-role": "error", text: d.message });
      replace(view, head, reason, problem);
      schedule(gen, ["Calculating", "Sending"].includes(label), reload);
      return;
    }
    const chart = h("div", { class: "chart", "data-role": "chart" }, h("p", { class: "muted", text: "Loading the chart…" }));
    replace(view, head,
      h("div", { class: "stats" },
        stat("Connector Users", users(row, d.connector_users), "connector_users"),
        stat("Netmera Users", users(row, d.netmera_users), "netmera_users"),
        stat("Reachable", users(row, d.reachable), "reachable"),
        stat("Message Sent", count(d.message_sent), "message_sent"),
        stat("Current version", d.current_version ? `v${d.current_version}` : "—", "current_version"),
        stat("Last Update Date", when(d.last_update_date), "last_update_date")),
      reason,
      h("div", { class: "card" }, h("h2", { text: "Users per published refresh" }), chart),
      h("div", { class: "card" }, h("h2", { text: "Why Connector Users and Netmera Users differ" + (d.current_version ? ` (version ${d.current_version})` : "") }),
        explanation(d), countsTables(d)),
      lastRunCard(d),
      h("h2", { text: "Kept versions" }), versionsCard(d, row, after),
      h("div", { class: "card" }, h("h2", { text: "Downloads" }), h("div", { class: "actions" },
        h("a", { class: "button", href: `api/${segmentPath(id)}/members.csv`, download: `${id}-members.csv`, "data-link": "members-csv", text: "Members (Netmera user ids, CSV)" }),
        d.current_version && d.unmatched_run ? unmatchedLink(id, null, `Unmatched source users of version ${d.current_version} and why (CSV)`) : null),
        d.unmatched_run ? h("p", { class: "muted small", "data-field": "unmatched_run", text: `From run ${d.unmatched_run}, the refresh version ${d.current_version}'s audience came from.` })
          : d.current_version ? h("p", { class: "muted small", "data-field": "unmatched_run", text: `The unmatched source users of version ${d.current_version} are no longer kept: only those of the newest three refreshes and versions are.` }) : null),
      h("h2", { text: "Recent runs" }), runsTable(d));
    loadChart(chart, id, gen);
    if (focusVersions) document.getElementById("versions").scrollIntoView();
    schedule(gen, ["Calculating", "Sending"].includes(label), reload);
  }

  // -- Message Report ----------------------------------------------------------------------

  function platformStats(stats) {
    if (!stats) return null;
    return h("div", {}, stats.map((s) => h("div", { class: "nowrap small", "data-platform": s.platform },
      h("strong", { text: `${s.platform} ` }), `sent ${count(s.sent)} · failed ${count(s.failed)} · clicked ${count(s.clicked)}`)));
  }

  async function renderReport(id) {
    const gen = generation;
    let sends;
    let row;
    try {
      [sends, row] = await Promise.all([api(`${segmentPath(id)}/report`), listRow(id)]);
    } catch (error) {
      if (gen === generation) {
        setCrumbs({ id, name: id }, "Message Report");
        replace(view, h("div", { class: "card empty", text: error.message }));
      }
      return;
    }
    if (gen !== generation) return;
    setCrumbs(row || { id, name: id }, "Message Report");
    const rows = sends.map((s) => h("tr", { "data-send": s.send_key || "" },
      h("td", {}, when(s.time), s.sent_by ? h("div", { class: "muted small", "data-field": "sent_by", text: `by ${s.sent_by}` }) : null),
      h("td", { class: "num" }, `v${s.version}`, s.audience === "entered" ? h("div", { class: "muted small", "data-field": "audience",
        text: s.since_version ? `entered after v${s.since_version}` : "entered (first send: all)" }) : null),
      h("td", { class: "message" }, h("div", { "data-field": "title", class: "strong", text: s.title }),
        s.text ? h("div", { class: "muted small clamp", "data-field": "text", title: s.text, text: s.text }) : null,
        s.notification_key !== null && s.notification_key !== undefined
          ? h("div", { class: "muted small", "data-field": "notification_key", text: `Netmera notification key ${s.notification_key}` }) : null),
      h("td", { class: "num", "data-field": "recipients", text: count(s.recipients) }),
      h("td", { class: "num", "data-field": "holdout" }, count(s.holdout ?? 0),
        s.holdout ? h("div", { class: "muted small" }, `${numbers.format(s.holdout_percent)} % · `,
          h("a", { href: `api/${segmentPath(id)}/sends/${encodeURIComponent(s.send_key)}/holdout.csv`, download: `${id}-holdout.csv`, "data-link": "holdout-csv", text: "CSV" })) : null),
      h("td", { class: "send-status" }, h("span", { "data-field": "status" }, smallBadge(s.status, SEND_STATUSES)),
        s.error ? h("div", { class: "small error-text", "data-field": "error", text: s.error }) : null),
      h("td", { class: "num", text: count(s.uncertain) }),
      h("td", { class: "num", text: count(s.not_addressable) }),
      h("td", { "data-field": "stats" }, platformStats(s.stats) || h("span", { class: "muted small", text: s.stats_error || "—" }))));
    replace(view,
      h("div", { class: "page-head" }, h("div", {},
        h("div", { class: "title" }, h("h1", { text: `Message Report: ${row ? row.name : id}` })),
        h("div", { class: "sub", text: "Every Send Message of this segment, newest first, with Netmera's delivery stats. The holdout group is the members held back to measure the campaign's lift." }))),
      h("div", { class: "card flush" }, h("table", { "data-role": "report" },
        h("thead", {}, h("tr", {}, ["Time", "Version", "Message", "Recipients", "Holdout", "Status", "Uncertain", "Not addressable", "Delivery (per platform)"]
          .map((t, i) => h("th", { class: [1, 3, 4, 6, 7].includes(i) ? "num" : null, text: t })))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 9, class: "empty", text: "No message sent yet." }))))));
    const sending = sends.some((s) => s.status === "sending");
    schedule(gen, sending, () => renderReport(id));
  }

  // -- routing -----------------------------------------------------------------------------

  /** Airflow's UI around the page (the same origin), or null when the page is on its own. */
  function airflowWindow() {
    try {
      const top = window.top;
      return top !== window && top.location.origin === location.origin ? top : null;
    } catch (_) {
      return null; // framed by another origin: nothing to mirror
    }
  }

  /** The route into the UI's own URL (`/plugin/connector-segments#/segments/ID`), so that a
   * reload or a copied link opens this view: replaced, never pushed (the iframe's own hash
   * changes already make the back button's steps), with the UI router's state kept. */
  function mirrorRoute() {
    const top = airflowWindow();
    if (!top) return;
    const url = top.location.pathname + top.location.search + (location.hash.length > 2 ? location.hash : "");
    if (url !== top.location.pathname + top.location.search + top.location.hash) top.history.replaceState(top.history.state, "", url);
  }

  function render() {
    generation += 1;
    closeModal();
    clearNotice();
    mirrorRoute();
    const [path, query] = (location.hash.replace(/^#/, "") || "/").split("?");
    let parts;
    try {
      parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    } catch (_) {
      setCrumbs();
      replace(view, h("div", { class: "card empty", "data-role": "bad-link" },
        "This link is not a valid page address. ", h("a", { href: "#/", text: "Back to the list" })));
      return;
    }
    if (parts[0] === "segments" && parts[1] && parts[2] === "report") renderReport(parts[1]);
    else if (parts[0] === "segments" && parts[1]) renderDetails(parts[1], query === "versions");
    else renderList();
  }

  // Opened by the UI with no route of its own (a reload, a shared link): the UI's URL has it.
  const framing = airflowWindow();
  if (framing && location.hash.length <= 2 && framing.location.hash.startsWith("#/")) {
    history.replaceState(null, "", framing.location.hash);
  }
  window.addEventListener("hashchange", render);
  render();
})();
