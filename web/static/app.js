// OmniTutor's student page: setup → plan → lesson over the browser's own EventSource.
// Vanilla JS, no build step. Everything a model wrote goes into the page as text
// (textContent), never as HTML; diagrams only through <img src>. docs/page.md explains it.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const STREAM_EVENTS = [
    "plan_ready", "beat_partial", "beat_complete", "audio_ready", "lesson_complete", "error", "heartbeat",
  ];
  const ERROR_COPY = {
    refused: "I can't teach that one. Want to try something else?",
    internal: "I lost my place. Mind starting over?",
    rate_limited: "Thinking hard, one more sec…",
    model_unavailable: "My thinking cap is off for a moment. Let's try again soon.",
    not_found: "That lesson isn't here any more.",
    conflict: "That clashed with something you already did. Try again.",
  };
  const LOCAL_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]"]);

  // ---- state ------------------------------------------------------------------------------

  const state = {
    lessonId: null,
    plan: null,          // {summary, beats: [{ord, kind, title, est_min}], after}
    beat1: null,
    beats: new Map(),    // ord → {card, status, content, partial, completions, audioUrl}
    current: 1,          // the beat the student is on
    adjustingFrom: null, // the beat an adjust of this page was made from, until its revision
    plansSeen: 0,        // plan_ready events seen by this lesson view
    revision: 1,
    source: null,        // the EventSource
    libraryCursor: null,
    features: new Set(["library", "save", "iterate", "ask", "attempt", "adjust", "visualize", "makeme"]),
  };

  // ---- HTTP -------------------------------------------------------------------------------

  function newKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    // Outside a secure context randomUUID is missing; build a v4 UUID by hand.
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = (body && body.code) || "internal";
      this.body = body || {};
    }
    // A route this server does not have yet (another feature's endpoint): hide the feature.
    get missingRoute() {
      return this.status === 404 && this.code === "not_found" && /^no route for /.test(this.message);
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // One request: credentials, JSON, and on POST an Idempotency-Key kept across retries so
  // the server runs it once. unauthorized refreshes the session and retries once silently;
  // rate_limited waits retry_after_ms and retries (contracts §11).
  async function api(method, path, body) {
    const key = method === "POST" ? newKey() : null;
    let refreshed = false;
    for (let attempt = 0; ; attempt++) {
      const headers = { Accept: "application/json" };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (key) headers["Idempotency-Key"] = key;
      const response = await fetch(path, {
        method,
        headers,
        credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
      if (response.ok) return data;
      const error = new ApiError(response.status, data);
      if (error.code === "unauthorized" && !refreshed && path !== "/v1/session") {
        refreshed = true;
        await openSession();
        continue;
      }
      if (error.code === "rate_limited" && attempt < 3) {
        owl(ERROR_COPY.rate_limited);
        await sleep(Math.min(error.body.retry_after_ms || 1500, 10000));
        hideOwl();
        continue;
      }
      throw error;
    }
  }

  function openSession() {
    return api("POST", "/v1/session", {});
  }

  // ---- feedback: owl, toast, drama modal, field errors --------------------------------------

  function owl(text, traceId) {
    const p = $("owl-text");
    p.textContent = text;
    if (traceId) {
      const trace = document.createElement("span");
      trace.className = "trace";
      trace.textContent = `trace ${traceId}`;
      p.append(trace);
    }
    $("owl").hidden = false;
  }

  function hideOwl() {
    $("owl").hidden = true;
  }

  let toastTimer = null;
  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  let lastFocus = null;
  let focusBeforeModal = null;
  function dramaModal(error) {
    const ms = error.body.retry_after_ms;
    $("modal-title").textContent = "Tutor is full";
    $("modal-text").textContent = ms ? `Tutor is full · try in ${humanWait(ms)}.` : error.message;
    focusBeforeModal = document.activeElement === document.body ? lastFocus : document.activeElement;
    $("modal").hidden = false;
    $("modal-close").focus();
  }

  function closeModal() {
    $("modal").hidden = true;
    if (focusBeforeModal) focusBeforeModal.focus();
  }

  function humanWait(ms) {
    const minutes = Math.ceil(ms / 60000);
    if (minutes < 2) return "a minute";
    if (minutes < 90) return `${minutes} minutes`;
    const hours = Math.round(minutes / 60);
    return hours === 1 ? "an hour" : `${hours} hours`;
  }

  function clearFieldErrors(form) {
    for (const p of form.querySelectorAll(".field-error")) { p.hidden = true; p.textContent = ""; }
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  // invalid_input names its field (`intent.level`): put the message under that control.
  function showFieldError(form, error) {
    const field = error.body.field || "";
    const slot = form.querySelector(`.field-error[data-for="${CSS.escape(field)}"]`);
    if (!slot) return false;
    slot.textContent = error.message.replace(/^[\w.]+: /, "");
    slot.hidden = false;
    const control = slot.parentElement.querySelector("input, select, textarea");
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
    return true;
  }

  // The one place an API error meets the student (contracts §11's UX column).
  function showError(error, form) {
    if (!(error instanceof ApiError)) {
      owl("I can't reach the tutor right now. Check your connection and try again.");
      return;
    }
    switch (error.code) {
      case "over_quota":
        dramaModal(error);
        return;
      case "invalid_input":
        if (form && showFieldError(form, error)) return;
        owl(error.message, error.body.trace_id);
        return;
      case "not_found":
        toast(ERROR_COPY.not_found);
        show("setup");
        return;
      default:
        owl(ERROR_COPY[error.code] || error.message, error.code === "internal" ? error.body.trace_id : null);
    }
  }

  // A feature whose endpoint this server lacks disappears quietly.
  function dropFeature(name) {
    state.features.delete(name);
    for (const el of document.querySelectorAll(`[data-feature="${name}"]`)) el.hidden = true;
  }

  // Runs `action`; an endpoint that does not exist here hides `feature` instead of failing.
  async function guarded(feature, button, action, form) {
    // Disabling the focused button drops focus to <body>; remember where the student was.
    lastFocus = document.activeElement;
    if (button) button.disabled = true;
    hideOwl();
    try {
      return await action();
    } catch (error) {
      if (error instanceof ApiError && error.missingRoute) {
        dropFeature(feature);
        return undefined;
      }
      showError(error, form);
      return undefined;
    } finally {
      if (button) button.disabled = false;
      if (document.activeElement === document.body && $("modal").hidden && lastFocus && lastFocus.isConnected) {
        lastFocus.focus();
      }
    }
  }

  // ---- views ------------------------------------------------------------------------------

  const VIEWS = ["setup", "plan", "lesson", "library", "save"];
  function show(name) {
    for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
    const heading = $(`view-${name}`).querySelector("h1");
    if (heading) heading.focus({ preventScroll: false });
    if (name !== "lesson") closeStream();
    if (name === "setup") loadRecent();
  }

  // ---- rendering model text as text -------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // **bold** inside a line, as <strong> nodes built from text.
  function inline(parent, text) {
    const parts = String(text).split(/\*\*(.+?)\*\*/g);
    parts.forEach((part, i) => {
      const clean = part.replace(/\*(\S(?:.*?\S)?)\*/g, "$1");
      parent.append(i % 2 ? el("strong", null, clean) : document.createTextNode(clean));
    });
    return parent;
  }

  // A small subset of Markdown (headings, lists, paragraphs, bold), built node by node.
  function renderMarkdown(text) {
    const root = document.createDocumentFragment();
    let list = null;
    let paragraph = [];
    const flush = () => {
      if (paragraph.length) root.append(inline(el("p"), paragraph.join(" ")));
      paragraph = [];
    };
    for (const raw of String(text).split("\n")) {
      const line = raw.trim();
      const heading = /^#{1,6}\s+(.*)$/.exec(line);
      const bullet = /^[-*]\s+(.*)$/.exec(line);
      const numbered = /^\d+[.)]\s+(.*)$/.exec(line);
      if (heading || !line) {
        flush();
        list = null;
        if (heading) root.append(inline(el("h3"), heading[1]));
      } else if (bullet || numbered) {
        flush();
        const tag = bullet ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== tag) {
          list = el(tag);
          root.append(list);
        }
        list.append(inline(el("li"), (bullet || numbered)[1]));
      } else {
        list = null;
        paragraph.push(line);
      }
    }
    flush();
    return root;
  }

  // ---- setup and plan ---------------------------------------------------------------------

  function setupBody() {
    const body = {
      subject: $("subject").value,
      topic: $("topic").value.trim(),
      intent: { level: $("level").value, time: $("time").value, style: $("style").value },
    };
    const freeText = $("free-text").value.trim();
    if (freeText) body.intent.free_text = freeText;
    return body;
  }

  async function submitSetup(event) {
    event.preventDefault();
    const form = $("setup-form");
    clearFieldErrors(form);
    const body = setupBody();
    if (!body.topic) {
      showFieldError(form, new ApiError(400, { field: "topic", message: "topic: Tell me what to teach." }));
      return;
    }
    const button = $("plan-submit");
    button.textContent = "Planning…";
    await guarded("plan", button, async () => {
      const answer = await api("POST", "/v1/plan", body);
      acceptPlan(answer);
      show("plan");
    }, form);
    button.textContent = "Plan my lesson";
  }

  function acceptPlan(answer) {
    state.lessonId = answer.lesson_id;
    state.plan = answer.plan;
    state.beat1 = answer.beat1;
    renderPlan(answer.plan, $("plan-beats"));
    $("plan-summary").textContent = answer.plan.summary || "";
    const after = $("plan-after");
    after.hidden = !answer.plan.after;
    after.textContent = answer.plan.after ? `Next time: ${answer.plan.after}` : "";
  }

  function renderPlan(plan, list) {
    list.replaceChildren();
    for (const beat of plan.beats || []) {
      const li = el("li");
      li.dataset.ord = beat.ord;
      li.append(el("span", "title", beat.title), el("span", "kind", beat.kind));
      if (beat.est_min) li.append(el("span", "mins", `${beat.est_min} min`));
      list.append(li);
    }
  }

  async function iterate(chip) {
    const feedback = $("iterate-feedback").value.trim();
    if (!chip && !feedback) return;
    const body = { lesson_id: state.lessonId };
    if (chip) body.chip = chip;
    if (feedback) body.feedback = feedback;
    await guarded("iterate", $("iterate-send"), async () => {
      try {
        acceptPlan(await api("POST", "/v1/plan", body));
        $("iterate-feedback").value = "";
        toast("Plan revised.");
      } catch (error) {
        // A server without iterate refuses the lesson_id field: hide iterate quietly.
        if (error instanceof ApiError && error.code === "invalid_input" && error.body.field === "lesson_id") {
          dropFeature("iterate");
          return;
        }
        throw error;
      }
    });
  }

  // ---- the lesson -------------------------------------------------------------------------

  function startLesson() {
    openLesson(state.lessonId, { topic: $("topic").value.trim(), plan: state.plan, beats: state.beat1 ? [beat1AsBeat(state.beat1)] : [] });
  }

  function beat1AsBeat(beat1) {
    return { ord: 1, status: "ready", content_json: beat1.content_json, narration_text: beat1.narration_text, audio_url: beat1.audio_url };
  }

  // Show a lesson (fresh from the plan, or from the library) and stream what it lacks.
  function openLesson(lessonId, known, finished) {
    closeStream();
    state.lessonId = lessonId;
    state.plan = known.plan;
    state.beats = new Map();
    state.current = 1;
    state.plansSeen = 0;
    $("beats").replaceChildren();
    $("answers").replaceChildren();
    $("makeme-result").hidden = true;
    $("lesson-done").hidden = true;
    $("view-lesson").classList.remove("finished");
    state.revision = known.revision_num || 1;
    $("beats").dataset.revision = String(state.revision);
    $("lesson-title").textContent = lessonTitle(known);
    renderLessonPlan(known.plan);
    for (const b of known.beats || []) {
      if (b.status === "ready" && b.content_json) completeBeat(b, false);
    }
    // A lesson picked up again starts at its last ready beat (where the student left off).
    const ready = [...state.beats.values()].filter((b) => b.status === "ready").map((b) => b.ord);
    setCurrent(finished || !ready.length ? 1 : Math.max(...ready));
    show("lesson");
    if (finished) {
      lessonComplete();
    } else {
      openStream(lessonId);
    }
  }

  function lessonTitle(known) {
    return known.topic || "Your lesson";
  }

  // The plan as pending beat cards; ready cards are kept.
  function renderLessonPlan(plan) {
    if (!plan || !plan.beats) return;
    const list = $("beats");
    for (const beat of plan.beats) {
      const entry = beatEntry(beat.ord);
      entry.planned = beat;
      if (entry.status === "pending") fillPending(entry);
    }
    // Cards beyond the new plan's length go.
    for (const [ord, entry] of state.beats) {
      if (ord > plan.beats.length) { entry.card.remove(); state.beats.delete(ord); }
    }
    const ordered = [...state.beats.keys()].sort((a, b) => a - b);
    for (const ord of ordered) list.append(state.beats.get(ord).card);
    updateProgress();
  }

  function beatEntry(ord) {
    let entry = state.beats.get(ord);
    if (!entry) {
      const card = el("li", "beat pending");
      card.id = `beat-${ord}`;
      card.dataset.ord = ord;
      card.dataset.completions = "0";
      card.tabIndex = -1;
      entry = { ord, card, status: "pending", partial: "", completions: 0, planned: null, audioUrl: null };
      state.beats.set(ord, entry);
      const list = $("beats");
      const after = [...list.children].find((c) => Number(c.dataset.ord) > ord);
      list.insertBefore(card, after || null);
    }
    return entry;
  }

  function beatHead(entry, title) {
    const head = el("div", "beat-head");
    head.append(el("h2", null, title || `Beat ${entry.ord}`));
    if (entry.planned) head.append(el("span", "kind", entry.planned.kind));
    return head;
  }

  function fillPending(entry) {
    entry.card.className = "beat pending";
    entry.card.replaceChildren(beatHead(entry, entry.planned && entry.planned.title), el("p", null, "Coming up…"));
  }

  function partialBeat(data) {
    const entry = beatEntry(data.ord);
    if (entry.status === "ready") return;
    if (data.reset) entry.partial = "";
    entry.partial += data.content_delta || "";
    entry.status = "streaming";
    entry.card.className = "beat streaming-beat" + (entry.ord === state.current ? " current" : "");
    const text = el("div", "streaming");
    text.append(renderMarkdown(withoutTitle(entry.partial, entry.planned && entry.planned.title)));
    entry.card.replaceChildren(beatHead(entry, entry.planned && entry.planned.title), text);
  }

  function completeBeat(data, fromStream) {
    const entry = beatEntry(data.ord);
    entry.status = "ready";
    entry.content = data.content_json || {};
    entry.narration = data.narration_text || "";
    if (fromStream) {
      entry.completions += 1;
      entry.card.dataset.completions = String(entry.completions);
    }
    if (data.audio_url) entry.audioUrl = data.audio_url;
    renderBeat(entry);
    updateProgress();
  }

  function renderBeat(entry) {
    const c = entry.content;
    const card = entry.card;
    card.className = "beat" + (entry.ord === state.current ? " current" : "");
    card.dataset.status = "ready";
    card.replaceChildren(beatHead(entry, c.title || (entry.planned && entry.planned.title)));
    if (c.body) card.append(renderMarkdown(withoutTitle(c.body, c.title)));
    if (Array.isArray(c.key_points) && c.key_points.length) {
      const box = el("div", "key-points");
      box.append(el("p", "key-title", "Key points"));
      const ul = el("ul");
      for (const point of c.key_points) ul.append(el("li", null, point));
      box.append(ul);
      card.append(box);
    }
    if (c.problem) card.append(renderProblem(entry, c.problem, String(c.body || "")));
    if (entry.audioUrl) attachAudio(entry, false);
    const actions = el("div", "beat-actions");
    const viz = el("button", null, "Visualize");
    viz.type = "button";
    viz.dataset.feature = "visualize";
    viz.hidden = !state.features.has("visualize");
    viz.addEventListener("click", () => visualize(entry, viz));
    actions.append(viz);
    const next = el("button", "continue primary", "Continue");
    next.type = "button";
    next.hidden = entry.ord !== state.current;
    next.addEventListener("click", () => advance(entry.ord));
    if (state.beats.size > entry.ord || (state.plan && state.plan.beats && state.plan.beats.length > entry.ord)) {
      actions.append(next);
    }
    card.append(actions);
  }

  // A test beat's choices in a stable shuffled order (the correct answer is not always first).
  function shuffled(choices, seed) {
    const order = choices.map((choice, i) => ({ choice, i, k: ((i + 1) * 2654435761 + seed * 40503) % 4294967296 }));
    order.sort((a, b) => a.k - b.k);
    return order;
  }

  // The card's heading already shows the title; a body that opens with it again drops it.
  function withoutTitle(body, title) {
    const [first, ...rest] = String(body).split("\n");
    const heading = /^#{1,6}\s+(.*)$/.exec(first.trim());
    return heading && title && heading[1].trim() === String(title).trim() ? rest.join("\n") : body;
  }

  function renderProblem(entry, problem, body) {
    const box = el("div", "problem");
    if (problem.prompt && !body.includes(problem.prompt)) box.append(inline(el("p"), problem.prompt));
    const form = el("form");
    form.noValidate = true;
    const canCheck = state.features.has("attempt");
    if (Array.isArray(problem.choices) && problem.choices.length) {
      const fieldset = el("fieldset", "choices");
      fieldset.append(el("legend", "visually-hidden", "Choose an answer"));
      for (const { choice, i } of shuffled(problem.choices, entry.ord)) {
        const label = el("label");
        const radio = el("input");
        radio.type = "radio";
        radio.name = `choice-${entry.ord}`;
        radio.value = String(i);
        label.append(radio, el("span", null, choice));
        fieldset.append(label);
      }
      form.append(fieldset);
    } else if (canCheck) {
      const id = `answer-${entry.ord}`;
      const label = el("label", "visually-hidden", "Your answer");
      label.htmlFor = id;
      const answer = el("textarea");
      answer.id = id;
      answer.rows = 2;
      answer.maxLength = 2000;
      answer.placeholder = "Your answer";
      form.append(label, answer);
    }
    const submit = el("button", null, "Check my answer");
    submit.type = "submit";
    submit.dataset.feature = "attempt";
    submit.hidden = !canCheck;
    const verdict = el("p", "verdict");
    verdict.setAttribute("aria-live", "polite");
    form.append(submit, verdict);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      attempt(entry, problem, form, submit, verdict);
    });
    box.append(form);
    if (Array.isArray(problem.hints) && problem.hints.length) {
      const details = el("details");
      details.append(el("summary", null, "Hints"));
      const ul = el("ul");
      for (const hint of problem.hints) ul.append(el("li", null, hint));
      details.append(ul);
      box.append(details);
    }
    if (problem.solution) {
      const details = el("details");
      details.append(el("summary", null, "Show the solution"), el("p", null, problem.solution));
      box.append(details);
    }
    return box;
  }

  async function attempt(entry, problem, form, submit, verdict) {
    const body = { beat_ord: entry.ord };
    const picked = form.querySelector("input[type=radio]:checked");
    if (Array.isArray(problem.choices) && problem.choices.length) {
      if (!picked) { verdict.textContent = "Pick an answer first."; return; }
      body.option = problem.choices[Number(picked.value)];
    } else {
      const text = form.querySelector("textarea").value.trim();
      if (!text) { verdict.textContent = "Write an answer first."; return; }
      body.answer = text;
    }
    await guarded("attempt", submit, async () => {
      const result = await api("POST", `/v1/lesson/${state.lessonId}/attempt`, body);
      verdict.className = `verdict ${result.verdict}`;
      const label = { correct: "Correct!", partial: "Partly right.", incorrect: "Not quite." }[result.verdict] || "";
      verdict.textContent = `${label} ${result.feedback || ""}`.trim();
    });
  }

  function setCurrent(ord) {
    state.current = ord;
    for (const entry of state.beats.values()) {
      entry.card.classList.toggle("current", entry.ord === ord);
      const next = entry.card.querySelector(".continue");
      if (next) next.hidden = entry.ord !== ord;
    }
    updateProgress();
  }

  function advance(fromOrd) {
    const to = fromOrd + 1;
    if (!state.beats.has(to)) return;
    setCurrent(to);
    const entry = state.beats.get(to);
    entry.card.scrollIntoView({ behavior: "smooth", block: "start" });
    entry.card.focus({ preventScroll: true });
    if (entry.audioUrl) playNarration(entry);
  }

  function updateProgress() {
    const total = (state.plan && state.plan.beats && state.plan.beats.length) || state.beats.size;
    const ready = [...state.beats.values()].filter((b) => b.status === "ready").length;
    $("lesson-progress").textContent = total ? `Beat ${state.current} of ${total} · ${ready} ready` : "";
  }

  function attachAudio(entry, autoplay) {
    let audio = entry.card.querySelector("audio");
    if (!audio) {
      audio = el("audio");
      audio.controls = true;
      audio.preload = "none";
      audio.setAttribute("aria-label", `Narration of beat ${entry.ord}`);
      const actions = entry.card.querySelector(".beat-actions");
      entry.card.insertBefore(audio, actions);
    }
    if (audio.getAttribute("src") !== entry.audioUrl) audio.src = entry.audioUrl;
    if (autoplay) playNarration(entry);
  }

  // Narration plays for the beat the student is on, unless something is already playing.
  function playNarration(entry) {
    const audio = entry.card.querySelector("audio");
    if (!audio) return;
    const busy = [...document.querySelectorAll("audio")].some((a) => a !== audio && !a.paused);
    if (!busy) audio.play().catch(() => { /* autoplay blocked: the controls are there */ });
  }

  // ---- the stream -------------------------------------------------------------------------

  function openStream(lessonId) {
    const source = new EventSource(`/v1/lesson/${encodeURIComponent(lessonId)}/stream`, { withCredentials: true });
    state.source = source;
    for (const name of STREAM_EVENTS) {
      source.addEventListener(name, (event) => {
        if (state.source !== source) return;
        $("reconnecting").hidden = true;
        let data = {};
        try { data = JSON.parse(event.data); } catch { return; }
        onStreamEvent(name, data);
      });
    }
    source.addEventListener("open", () => { $("reconnecting").hidden = true; });
    source.addEventListener("error", (event) => {
      if (state.source !== source || event.data) return;  // an `error` event, handled above
      if (source.readyState === EventSource.CONNECTING) {
        // The browser reconnects by itself, sending Last-Event-ID.
        $("reconnecting").hidden = false;
      } else if (source.readyState === EventSource.CLOSED) {
        // The server refused the stream (an HTTP error, not SSE): ask it why.
        $("reconnecting").hidden = true;
        state.source = null;
        diagnoseStream(lessonId);
      }
    });
  }

  function closeStream() {
    if (state.source) state.source.close();
    state.source = null;
    $("reconnecting").hidden = true;
  }

  function onStreamEvent(name, data) {
    switch (name) {
      case "plan_ready":
        state.plansSeen += 1;
        // A second plan_ready, or one newer than what the page shows, is a revised plan.
        if (state.plansSeen > 1 || (data.revision_num || 0) > state.revision) revisePlan(data);
        else { state.plan = data.plan; renderLessonPlan(data.plan); }
        break;
      case "beat_partial":
        partialBeat(data);
        break;
      case "beat_complete":
        completeBeat(data, true);
        if (data.ord === state.current && data.audio_url) playNarration(state.beats.get(data.ord));
        break;
      case "audio_ready": {
        const entry = state.beats.get(data.beat_ord);
        if (!entry) break;
        entry.audioUrl = data.audio_url;
        if (entry.status === "ready") attachAudio(entry, entry.ord === state.current);
        break;
      }
      case "lesson_complete":
        closeStream();
        lessonComplete();
        break;
      case "error":
        if (!data.recoverable) {
          closeStream();
          showError(new ApiError(0, data));
        } else if (data.code === "rate_limited" || data.code === "model_unavailable") {
          owl(ERROR_COPY[data.code]);
        }
        break;
      default:
        break;  // heartbeat
    }
  }

  // A revised plan (adjust): beats after the student's current one are superseded; the
  // stream sends them again under the new plan.
  function revisePlan(data) {
    if (data.revision_num) state.revision = data.revision_num;
    $("beats").dataset.revision = String(state.revision);
    // Beats up to the one the adjust was made from survive: the event's word if it says,
    // else this page's own adjust, else where the student is.
    const keep = data.current_beat_ord || state.adjustingFrom || state.current;
    state.adjustingFrom = null;
    state.plan = data.plan;
    for (const [ord, entry] of state.beats) {
      if (ord > keep) {
        entry.status = "pending";
        entry.partial = "";
        entry.content = null;
        entry.audioUrl = null;
        entry.completions = 0;
        entry.card.dataset.completions = "0";
        delete entry.card.dataset.status;
      }
    }
    $("lesson-done").hidden = true;
    $("view-lesson").classList.remove("finished");
    renderLessonPlan(data.plan);
    for (const [ord, entry] of state.beats) if (ord > keep) fillPending(entry);
  }

  async function diagnoseStream(lessonId) {
    const controller = new AbortController();
    try {
      const response = await fetch(`/v1/lesson/${encodeURIComponent(lessonId)}/stream`, {
        credentials: "same-origin", headers: { Accept: "text/event-stream" }, signal: controller.signal,
      });
      if (response.status === 204) { lessonComplete(); return; }
      if (response.ok) { controller.abort(); openStream(lessonId); return; }
      const body = await response.json().catch(() => ({}));
      const error = new ApiError(response.status, body);
      // Refused before it began (the day's budget is spent): back to the plan, Start
      // works again later, and the modal says when.
      if (error.code === "over_quota" && state.plan) show("plan");
      showError(error);
    } catch {
      owl("I can't reach the tutor right now. Check your connection and reload.");
    }
  }

  function lessonComplete() {
    $("view-lesson").classList.add("finished");  // a finished lesson is not adjusted (409)
    const done = $("lesson-done");
    done.hidden = false;
    const extras = [
      state.features.has("ask") ? "ask anything" : null,
      state.features.has("makeme") ? "make yourself notes" : null,
    ].filter(Boolean);
    $("done-text").textContent = `All ${state.beats.size} beats are ready. Take them at your own pace` +
      (extras.length ? `; ${extras.join(", or ")}.` : ".");
    for (const entry of state.beats.values()) {
      if (entry.status === "ready") renderBeat(entry);
    }
    updateProgress();
  }

  // ---- ask, adjust, visualize, make-me ------------------------------------------------------

  async function ask(event) {
    event.preventDefault();
    const input = $("ask-question");
    const question = input.value.trim();
    if (!question) return;
    await guarded("ask", $("ask-send"), async () => {
      const result = await api("POST", `/v1/lesson/${state.lessonId}/ask`, { question, beat_ord: state.current });
      input.value = "";
      const li = el("li");
      li.append(el("p", "q", question), el("p", "a", (result.answer && result.answer.text) || ""));
      if (result.audio_url) {
        const audio = el("audio");
        audio.controls = true;
        audio.src = result.audio_url;
        li.append(audio);
      }
      $("answers").prepend(li);
    });
  }

  async function adjust(level, button) {
    state.adjustingFrom = state.current;  // the stream may announce the revision first
    const applied = await guarded("adjust", button, async () => {
      const result = await api("POST", `/v1/lesson/${state.lessonId}/adjust`, { level, current_beat_ord: state.current });
      toast(level === "easier" ? "Making it easier from here on." : "Making it harder from here on.");
      // The stream announces the revision itself (plan_ready with revision_num) and then
      // re-streams the beats after result.current_beat_ord.
      if (result.current_beat_ord && state.revision < (result.revision_num || 0)) {
        state.adjustingFrom = result.current_beat_ord;
      }
      return true;
    });
    if (!applied) state.adjustingFrom = null;
  }

  async function visualize(entry, button) {
    await guarded("visualize", button, async () => {
      const result = await api("POST", `/v1/lesson/${state.lessonId}/visualize`, { beat_ord: entry.ord });
      let img = entry.card.querySelector("img.diagram");
      if (!img) {
        img = el("img", "diagram");
        entry.card.insertBefore(img, entry.card.querySelector(".beat-actions"));
      }
      img.alt = `Diagram for ${(entry.content && entry.content.title) || `beat ${entry.ord}`}`;
      img.src = result.url;  // an <img> never runs an SVG's scripts
    });
  }

  // Any JSON as nested text nodes: make-me outputs have several shapes.
  function renderValue(value) {
    if (Array.isArray(value)) {
      const ul = el("ul");
      for (const item of value) {
        const li = el("li");
        li.append(renderValue(item));
        ul.append(li);
      }
      return ul;
    }
    if (value && typeof value === "object") {
      const dl = el("dl");
      for (const [k, v] of Object.entries(value)) {
        dl.append(el("dt", null, k.replace(/_/g, " ")));
        const dd = el("dd");
        dd.append(renderValue(v));
        dl.append(dd);
      }
      return dl;
    }
    return document.createTextNode(value === null || value === undefined ? "" : String(value));
  }

  async function makeme(event) {
    const select = event.target;
    const output = select.value;
    if (!output) return;
    await guarded("makeme", select, async () => {
      const result = await api("POST", `/v1/lesson/${state.lessonId}/makeme`, { output });
      const box = $("makeme-result");
      box.replaceChildren(el("h2", null, select.options[select.selectedIndex].text));
      if (result.content !== undefined) box.append(renderValue(result.content));
      if (result.url) {
        const a = el("a", null, "Open");
        a.href = result.url;
        a.rel = "noopener";
        const p = el("p");
        p.append(a);
        box.append(p);
      }
      box.hidden = false;
      box.scrollIntoView({ behavior: "smooth", block: "nearest" });
    });
    select.value = "";
  }

  // ---- library ----------------------------------------------------------------------------

  function lessonButton(lesson) {
    const button = el("button");
    button.type = "button";
    button.dataset.lessonId = lesson.lesson_id;
    button.append(el("span", "title", lesson.topic || "Untitled lesson"));
    const done = lesson.beats_completed != null && lesson.total_beats ? `${lesson.beats_completed}/${lesson.total_beats} beats` : "";
    const when = lesson.created_at ? new Date(lesson.created_at).toLocaleDateString() : "";
    button.append(el("span", "meta", [lesson.subject, lesson.status, done, when].filter(Boolean).join(" · ")));
    button.addEventListener("click", () => resumeLesson(lesson.lesson_id));
    return button;
  }

  async function loadLibrary(append) {
    if (!state.features.has("library")) return;
    await guarded("library", $("library-more"), async () => {
      const query = append && state.libraryCursor ? `&cursor=${encodeURIComponent(state.libraryCursor)}` : "";
      const page = await api("GET", `/v1/lessons?limit=20${query}`);
      const list = $("library-list");
      if (!append) list.replaceChildren();
      for (const lesson of page.lessons || []) {
        const li = el("li");
        li.append(lessonButton(lesson));
        list.append(li);
      }
      state.libraryCursor = page.next_cursor || null;
      $("library-more").hidden = !state.libraryCursor;
      $("library-empty").hidden = list.children.length > 0;
    });
  }

  async function loadRecent() {
    if (!state.features.has("library")) return;
    try {
      const page = await api("GET", "/v1/lessons?limit=3");
      const list = $("recent-list");
      list.replaceChildren();
      for (const lesson of page.lessons || []) {
        const li = el("li");
        li.append(lessonButton(lesson));
        list.append(li);
      }
      $("recent").hidden = list.children.length === 0;
    } catch (error) {
      if (error instanceof ApiError && error.missingRoute) dropFeature("library");
    }
  }

  async function resumeLesson(lessonId) {
    await guarded("library", null, async () => {
      const lesson = await api("GET", `/v1/lesson/${encodeURIComponent(lessonId)}`);
      const finished = lesson.status === "complete";
      openLesson(lessonId, lesson, finished);
    });
  }

  // ---- save my work -----------------------------------------------------------------------

  async function saveWork(event) {
    event.preventDefault();
    const form = $("save-form");
    clearFieldErrors(form);
    const email = $("save-email").value.trim();
    if (!email || !email.includes("@")) {
      showFieldError(form, new ApiError(400, { field: "email", message: "email: Enter your email address." }));
      return;
    }
    await guarded("save", $("save-send"), async () => {
      await api("POST", "/v1/auth/magic-link", { email });
      const sent = $("save-sent");
      sent.replaceChildren(document.createTextNode(`We sent a sign-in link to ${email}. Open it on any device to keep your lessons.`));
      if (LOCAL_HOSTS.has(location.hostname)) {
        // The local default sends no mail: the link waits in the outbox.
        sent.append(el("br"), document.createTextNode("Running locally? The link is in the outbox: "), el("code", null, "omnitutor auth outbox"));
      }
      sent.hidden = false;
    }, form);
  }

  // ---- which features this server has ------------------------------------------------------

  // A POST-only route answers GET with 405 when it exists and 404 when it does not: asking
  // changes nothing and costs no model call. Missing features are hidden before first use.
  const PROBES = {
    ask: "/v1/lesson/probe/ask",
    attempt: "/v1/lesson/probe/attempt",
    adjust: "/v1/lesson/probe/adjust",
    visualize: "/v1/lesson/probe/visualize",
    makeme: "/v1/lesson/probe/makeme",
    save: "/v1/auth/magic-link",
  };

  async function probeFeatures() {
    await Promise.all(Object.entries(PROBES).map(async ([feature, path]) => {
      try {
        const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (response.status === 404) dropFeature(feature);
      } catch {
        /* offline: keep the feature; using it will say what is wrong */
      }
    }));
  }

  // ---- wiring -----------------------------------------------------------------------------

  function wire() {
    $("setup-form").addEventListener("submit", submitSetup);
    $("plan-back").addEventListener("click", () => show("setup"));
    $("plan-start").addEventListener("click", startLesson);
    $("iterate-form").addEventListener("submit", (event) => { event.preventDefault(); iterate(null); });
    for (const chip of document.querySelectorAll(".chip")) {
      chip.addEventListener("click", () => iterate(chip.dataset.chip));
    }
    $("ask-form").addEventListener("submit", ask);
    $("adjust-easier").addEventListener("click", (e) => adjust("easier", e.currentTarget));
    $("adjust-harder").addEventListener("click", (e) => adjust("harder", e.currentTarget));
    $("makeme-output").addEventListener("change", makeme);
    $("nav-new").addEventListener("click", () => show("setup"));
    $("nav-library").addEventListener("click", () => { show("library"); loadLibrary(false); });
    $("library-more").addEventListener("click", () => loadLibrary(true));
    $("nav-save").addEventListener("click", () => show("save"));
    $("save-form").addEventListener("submit", saveWork);
    $("owl-dismiss").addEventListener("click", hideOwl);
    $("modal-close").addEventListener("click", closeModal);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !$("modal").hidden) closeModal();
    });
    $("modal").addEventListener("keydown", (event) => {
      if (event.key === "Tab") { event.preventDefault(); $("modal-close").focus(); }  // one control
    });
  }

  async function main() {
    wire();
    try {
      await openSession();
    } catch (error) {
      showError(error);
      return;
    }
    await Promise.all([probeFeatures(), loadRecent()]);
    document.body.dataset.ready = "true";
    $("topic").focus();
  }

  main();
})();
