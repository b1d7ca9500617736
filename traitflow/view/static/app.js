// traitflow's research views: draws the page whose data the server (or the static report) put in
// <script id="tf-data">. Every text from a model or a dataset goes in through textContent, never
// as HTML. Charts are Vega-Lite through vega-embed (bundled; nothing is fetched from a CDN).
"use strict";
(function () {
  const payload = JSON.parse(document.getElementById("tf-data").textContent);
  const REPORT = payload.mode === "report";
  const main = document.getElementById("tf-main");
  const nav = document.getElementById("tf-nav");

  // ------------------------------------------------------------------ small helpers
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (k === "style") el.style.cssText = v;
      else if (k === "href") el.setAttribute("href", link(v));
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids.flat()) {
      if (kid == null || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  // A route ("/demo/steering?trait=…") as an href: itself in the viewer, a hash in the report.
  function link(path) { return REPORT && path.startsWith("/") ? "#" + path : path; }
  function num(x, digits = 2) {
    if (x == null || Number.isNaN(x)) return "n/a";
    if (typeof x !== "number") return String(x);
    return Math.abs(x) >= 1000 ? x.toFixed(0) : x.toFixed(digits);
  }
  function signed(x, digits = 2) { return x == null ? "n/a" : (x >= 0 ? "+" : "") + num(x, digits); }
  function section(title, ...kids) { return h("section", {}, h("h2", {}, title), ...kids); }
  function note(text) { return h("p", { class: "note" }, text); }
  function chart(spec) {
    const box = h("div", { class: "chart" });
    if (typeof vegaEmbed === "function") {
      vegaEmbed(box, spec, { renderer: "svg", actions: false }).catch((e) => { box.textContent = "chart: " + e; });
    } else {
      box.textContent = "(the Vega bundle did not load)";
    }
    return box;
  }
  // Diverging colour of a value in [-1, 1]: red below, green above, white at 0.
  function colour(v) {
    const t = Math.max(-1, Math.min(1, v || 0));
    const a = Math.abs(t);
    return t >= 0 ? `rgba(22, 150, 60, ${a * 0.75})` : `rgba(210, 40, 40, ${a * 0.75})`;
  }
  function select(options, value, onchange, attrs) {
    const el = h("select", Object.assign({ onchange: (e) => onchange(e.target.value) }, attrs || {}),
      options.map(([v, label]) => h("option", { value: v, selected: String(v) === String(value) }, label)));
    return el;
  }

  // A sortable table: columns [{key, label, format?, render?}], rows of objects.
  function table(columns, rows, opts) {
    opts = opts || {};
    let sortKey = opts.sortKey || null, dir = opts.dir || 1;
    const tbody = h("tbody");
    const heads = columns.map((c) => h("th", {
      class: "sortable", title: "sort", onclick: () => {
        dir = sortKey === c.key ? -dir : (c.numeric ? -1 : 1); sortKey = c.key; fill();
      },
    }, c.label));
    function value(row, c) { return c.value ? c.value(row) : row[c.key]; }
    function fill() {
      const sorted = rows.slice();
      if (sortKey) {
        const c = columns.find((x) => x.key === sortKey);
        sorted.sort((x, y) => {
          const a = value(x, c), b = value(y, c);
          if (a == null) return 1; if (b == null) return -1;
          return (a < b ? -1 : a > b ? 1 : 0) * dir;
        });
      }
      tbody.replaceChildren(...sorted.map((row) => h("tr", opts.rowAttrs ? opts.rowAttrs(row) : {},
        columns.map((c) => h("td", { class: c.numeric ? "num" : null },
          c.render ? c.render(row) : c.format ? c.format(value(row, c)) : value(row, c) == null ? "—" : String(value(row, c)))))));
    }
    fill();
    return h("table", { class: opts.class || "data" }, h("thead", {}, h("tr", {}, heads)), tbody);
  }

  // The page's selection (a run, a prompt, a trait) lives in the address, so a link can share it.
  function setParams(changes, reload) {
    const { path, params } = current();
    for (const [k, v] of Object.entries(changes)) { if (v == null) params.delete(k); else params.set(k, v); }
    const target = path + "?" + params.toString().replace(/%2F/g, "/");
    if (REPORT) { location.hash = target; return; }
    if (reload) { location.href = target; return; }
    history.replaceState(null, "", target);
    render();
  }
  function current() {
    if (!REPORT) return { path: location.pathname, params: new URLSearchParams(location.search) };
    const hash = location.hash.slice(1) || payload.start;
    const cut = hash.indexOf("?");
    const path = cut < 0 ? hash : hash.slice(0, cut);
    let decoded = path;
    try { decoded = decodeURIComponent(path); } catch (e) { /* a malformed escape: use it as it is */ }
    return { path: decoded, params: new URLSearchParams(cut < 0 ? "" : hash.slice(cut + 1)) };
  }
  // The report holds one data blob per page, keyed by its route; selection parameters are ignored.
  function reportPage(path, params) {
    for (const [key, data] of Object.entries(payload.pages)) {
      const [kpath, kquery] = key.split("?");
      if (kpath !== path) continue;
      const wanted = new URLSearchParams(kquery || "");
      let match = true;
      for (const [k, v] of wanted) if (params.get(k) !== v) { match = false; break; }
      if (match) return data;
    }
    return null;
  }

  // ------------------------------------------------------------------ pages
  function render() {
    const { path, params } = current();
    const data = REPORT ? reportPage(path, params) : payload.page;
    if (!data) {
      main.replaceChildren(h("h1", {}, "Not in this report"), note(`${path}: this page was not materialized when the report was written.`));
      return;
    }
    const exp = data.experiment;
    nav.replaceChildren(...[h("a", { href: `/${encodeURIComponent(exp)}/` }, `experiment ${exp}`),
      data.page !== "experiment" ? h("span", {}, " › " + data.page) : null,
      REPORT ? h("span", { class: "right" }, "static report") : h("a", { class: "right", href: `/${encodeURIComponent(exp)}/chat` }, "Live chat")]
      .filter(Boolean));
    const pages = { experiment, extraction, steering, dynamics, comparison, benchmarks, chat: liveChat };
    main.replaceChildren(...[].concat(pages[data.page](data, params)));
    document.title = `${data.page} · ${exp} · traitflow`;
  }

  function experiment(d) {
    const columns = [
      { key: "trait", label: "trait", render: (r) => h("a", { href: r.links.extraction }, r.trait) },
      { key: "position", label: "position" },
      { key: "method", label: "method", render: (r) => r.method == null ? "—" : r.refined_from ? `${r.method} (of ${r.refined_from})` : r.method },
      { key: "layer", label: "layer", numeric: true },
      { key: "val_accuracy", label: "val acc", numeric: true, format: (x) => num(x, 3) },
      { key: "cohens_d", label: "d", numeric: true, format: (x) => num(x) },
      { key: "coefficient", label: "coef", numeric: true, format: (x) => num(x, 1) },
      { key: "delta", label: "steering Δ", numeric: true, format: (x) => signed(x, 1) },
      { key: "coherence", label: "coherence", numeric: true, format: (x) => num(x, 1) },
      { key: "rule", label: "chosen by" },
      { key: "links", label: "steering", render: (r) => Object.entries(r.links).filter(([k]) => k.startsWith("steering:"))
          .map(([k, v]) => h("a", { href: v, class: "pill" }, k.slice(9))) },
    ];
    return [h("h1", {}, `Experiment ${d.experiment}`), note(`artifacts: ${d.storage}`),
      section(`Traits (${d.traits.length})`, table(columns, d.traits, { sortKey: "trait", class: "data experiment" })),
      section("Trait dynamics", d.dynamics.length ? h("ul", {}, d.dynamics.map((x) => h("li", {}, h("a", { href: x.link }, `${x.prompt_set} · ${x.variant}`))))
        : note("No projections materialized yet.")),
      section("Model comparison", d.comparisons.length ? h("ul", {}, d.comparisons.map((x) => h("li", {}, h("a", { href: x.link }, `${x.a} → ${x.b} on ${x.prompt_set}`))))
        : note("No comparisons materialized yet.")),
      section("Capability benchmarks", (d.benchmarks || []).length ? h("ul", {}, d.benchmarks.map((x) => h("li", {}, h("a", { href: x.link }, `${x.benchmark} on ${x.variant}`))))
        : note("No benchmarks materialized yet."))];
  }

  function heatmap(rows, value, title, scheme, domain) {
    const layers = new Set(rows.map((r) => r.layer)).size;
    const methods = new Set(rows.map((r) => r.method)).size;
    const step = Math.max(12, Math.min(28, Math.floor(900 / Math.max(1, layers))));
    return {
      $schema: "https://vega.github.io/schema/vega-lite/v5.json",
      title, data: { values: rows }, width: { step }, height: { step: 22 * (methods > 8 ? 0.8 : 1) },
      layer: [
        { mark: "rect", encoding: {
          x: { field: "layer", type: "ordinal" }, y: { field: "method", type: "nominal", title: null },
          color: { field: value, type: "quantitative", scale: Object.assign({ scheme }, domain ? { domain } : {}), title: value },
          tooltip: ["position", "method", "layer", { field: "val_accuracy", format: ".3f" }, { field: "auroc", format: ".3f" },
            { field: "cohens_d", format: ".2f" }, "polarity"] } },
        ...(layers <= 24 ? [{ mark: { type: "text", fontSize: 9 }, encoding: {
          x: { field: "layer", type: "ordinal" }, y: { field: "method", type: "nominal" },
          text: { field: value, type: "quantitative", format: ".2f" } } }] : []),
      ],
    };
  }

  function extraction(d) {
    const out = [h("h1", {}, `Extraction · ${d.trait}`), note(`variant ${d.variant}`)];
    if (d.definition) out.push(h("blockquote", {}, d.definition));
    if (d.chosen && d.chosen.method) {
      const c = d.chosen;
      out.push(section("Chosen vector", h("p", {}, `${c.position} ${c.component} ${c.method} at layer ${c.layer}` +
        (c.delta != null ? `, steering Δ ${signed(c.delta, 1)} at coherence ${num(c.coherence, 1)}` : "") + ` — ${c.rule}`),
        Object.entries(d.steering).map(([v, href]) => h("a", { href, class: "pill" }, `steering sweep on ${v}`))));
    }
    if (!d.scores.length) { out.push(note("extraction_eval is not materialized yet.")); }
    const positions = [...new Set(d.scores.map((r) => r.position))];
    for (const position of positions) {
      const rows = d.scores.filter((r) => r.position === position);
      const best = d.best[position];
      out.push(section(`Position ${position}`,
        best ? h("p", {}, `best: ${best.method} layer ${best.layer}, val acc ${num(best.val_accuracy, 3)}, d ${num(best.cohens_d)}`) : null,
        h("div", { class: "scroll" }, chart(heatmap(rows, "val_accuracy", `held-out accuracy · ${position}`, "viridis", [0.5, 1]))),
        h("div", { class: "scroll" }, chart(heatmap(rows, "cohens_d", `Cohen's d · ${position}`, "blues")))));
    }
    const v = d.vetting;
    if (v.samples.length) {
      const s = v.summary;
      const sampleRows = (passed) => v.samples.filter((x) => x.passed === passed || (passed && x.passed == null));
      const cols = [{ key: "side", label: "side" }, { key: "score", label: "score", numeric: true, format: (x) => num(x, 1) },
        { key: "prompt", label: "scenario", render: (r) => h("span", { class: "text" }, r.prompt || "") },
        { key: "response", label: "reply", render: (r) => h("span", { class: "text" }, r.response || "") }];
      out.push(section("Vetting samples",
        s ? note(`passed ${s.passed_positive} positive and ${s.passed_negative} negative of ${s.total}`) : note("vetting off: every reply is used"),
        h("details", { open: true }, h("summary", {}, `failed (${sampleRows(false).length})`), table(cols, sampleRows(false), { class: "data vetting failed" })),
        h("details", { open: sampleRows(true).length <= 20 }, h("summary", {}, `passed (${sampleRows(true).length})`), table(cols, sampleRows(true), { class: "data vetting passed" }))));
    }
    if (d.lens.length) {
      out.push(section("Logit lens", d.lens.map((lens) => h("details", {}, h("summary", {}, `${lens.position} ${lens.method}`),
        table([{ key: "layer", label: "layer", numeric: true }, { key: "top", label: "top tokens", render: (r) => r.top.map(JSON.stringify).join(" ") },
          { key: "bottom", label: "bottom tokens", render: (r) => r.bottom.map(JSON.stringify).join(" ") }], lens.layers)))));
    }
    return out;
  }

  function steering(d, params) {
    const out = [h("h1", {}, `Steering sweep · ${d.trait} on ${d.variant}`),
      h("p", {}, h("a", { href: d.extraction }, "extraction of this trait"))];
    if (!d.runs.length) { out.push(note("No steering runs yet.")); return out; }
    out.push(note(`baseline trait ${num(d.baseline.trait_mean, 1)}, coherence ${num(d.baseline.coherence_mean, 1)}; ` +
      `a run counts when its coherence is ≥ ${num(d.min_coherence, 0)}` + (d.finished ? "" : " (search not finished)")));
    const runs = d.runs.map((r) => Object.assign({}, r, { validity: r.valid ? "valid" : "incoherent" }));
    out.push(section("Runs", h("div", { class: "row" },
      chart({ $schema: "https://vega.github.io/schema/vega-lite/v5.json", title: "trait score by coefficient", width: 360, height: 220,
        data: { values: runs }, mark: { type: "point", filled: true, size: 70 },
        encoding: { x: { field: "coefficient", type: "quantitative" }, y: { field: "trait_mean", type: "quantitative", title: "trait" },
          color: { field: "layer", type: "nominal" }, shape: { field: "validity", type: "nominal" },
          tooltip: ["run", "layer", { field: "coefficient", format: ".2f" }, { field: "trait_mean", format: ".1f" }, { field: "coherence_mean", format: ".1f" }] } }),
      chart({ $schema: "https://vega.github.io/schema/vega-lite/v5.json", title: "coherence by coefficient", width: 360, height: 220,
        data: { values: runs }, mark: { type: "line", point: true },
        encoding: { x: { field: "coefficient", type: "quantitative" }, y: { field: "coherence_mean", type: "quantitative", title: "coherence" },
          color: { field: "layer", type: "nominal" }, tooltip: ["run", { field: "coherence_mean", format: ".1f" }] } })),
    table([{ key: "run", label: "run", render: (r) => h("a", { href: "#", onclick: (e) => { e.preventDefault(); setParams({ run: r.run }); } }, r.run + (r.run === d.best_run ? " ★" : "")) },
      { key: "layer", label: "layer", numeric: true }, { key: "coefficient", label: "coef", numeric: true, format: (x) => num(x, 2) },
      { key: "trait_mean", label: "trait", numeric: true, format: (x) => num(x, 1) },
      { key: "coherence_mean", label: "coherence", numeric: true, format: (x) => num(x, 1) }, { key: "validity", label: "" }],
    runs, { sortKey: "layer", class: "data runs" })));

    const run = params.get("run") || d.best_run || runs[0].run;
    const minCoh = Number(params.get("min_coherence") || 0);
    const answers = d.answers[run] || [];
    const baseline = new Map((d.answers.baseline || []).map((a) => [a.question, a]));
    const shown = answers.filter((a) => (a.coherence == null ? 0 : a.coherence) >= minCoh);
    out.push(section("Responses",
      h("div", { class: "controls" },
        h("label", {}, "run ", select(runs.map((r) => [r.run, `${r.run} · trait ${num(r.trait_mean, 1)} · coherence ${num(r.coherence_mean, 1)}`]), run,
          (v) => setParams({ run: v }), { id: "tf-run" })),
        h("label", {}, " coherence ≥ ", h("input", { id: "tf-min-coherence", type: "number", min: 0, max: 100, step: 5, value: minCoh,
          onchange: (e) => setParams({ min_coherence: e.target.value }) }))),
      note(`${shown.length} of ${answers.length} answers shown`),
      table([{ key: "question", label: "question", render: (a) => h("span", { class: "text" }, a.question) },
        { key: "answer", label: `steered (${run})`, render: (a) => h("span", { class: "text steered" }, a.answer) },
        { key: "trait", label: "trait", numeric: true, format: (x) => num(x, 1) },
        { key: "coherence", label: "coherence", numeric: true, format: (x) => num(x, 1) },
        { key: "baseline", label: "baseline answer", value: (a) => (baseline.get(a.question) || {}).answer,
          render: (a) => { const b = baseline.get(a.question); return b ? h("span", { class: "text baseline" }, b.answer, h("small", {}, ` (trait ${num(b.trait, 1)})`)) : "—"; } }],
      shown, { class: "data responses" })));
    return out;
  }

  // Tokens as spans coloured by one score; hovering one shows all of its numbers.
  function tokenView(tokens, colourOf, details, dimmed) {
    const tip = h("div", { class: "tip", hidden: true });
    const spans = tokens.map((tok, i) => h("span", {
      class: "tok" + (dimmed && dimmed(i) ? " dim" : ""), style: `background:${colourOf(i)}`, "data-i": i,
      onmouseenter: (e) => { tip.replaceChildren(...details(i)); tip.hidden = false; const r = e.target.getBoundingClientRect();
        tip.style.left = `${r.left + window.scrollX}px`; tip.style.top = `${r.bottom + window.scrollY + 4}px`; },
      onmouseleave: () => { tip.hidden = true; },
    }, display(tok)));
    return h("div", { class: "tokens" }, spans, tip);
  }
  // Byte-level BPE marks a leading space "Ġ" and a newline "Ċ"; show them as what they are.
  function display(tok) { return String(tok).replace(/^\u0120/, " ").replace(/\u0120/g, " ").replace(/\u010a/g, "↵\n"); }

  function dynamics(d, params) {
    const out = [h("h1", {}, `Trait dynamics · ${d.prompt_set} · ${d.variant}`)];
    if (!d.materialized) { out.push(note("projections are not materialized yet for this prompt set and variant.")); return out; }
    const traits = Object.keys(d.traits);
    const wanted = params.get("prompt");
    const item = d.items.find((it) => it.id === wanted) || d.items[0];
    if (!item) { out.push(note("No responses.")); return out; }
    const trait = traits.includes(params.get("trait")) ? params.get("trait") : traits[0];
    const layersOf = (t) => ((d.traits[t] || {}).layers || d.layers).map(String);  // each trait's monitored layers
    const layers = layersOf(trait);
    const layer = layers.includes(params.get("layer")) ? params.get("layer") : layers[0];
    const dropMassive = params.get("massive") !== "keep";
    const centre = params.get("centre") || "zero";
    const scores = ((item.scores[trait] || {})[layer]) || [];
    const massive = new Set((item.massive_tokens || {})[layer] || []);
    const start = item.prompt_len || 0;
    const shownIdx = scores.map((_, i) => i).filter((i) => i >= start && !(dropMassive && massive.has(i)));
    const mean = shownIdx.length ? shownIdx.reduce((s, i) => s + scores[i], 0) / shownIdx.length : 0;
    const mid = centre === "mean" ? mean : 0;
    const scale = Math.max(1e-9, ...shownIdx.map((i) => Math.abs(scores[i] - mid)));
    const details = (i) => [h("b", {}, JSON.stringify(display(item.tokens[i])) + ` #${i}` + (i < start ? " (prompt)" : "")),
      h("table", { class: "tipscores" },
        traits.map((t) => h("tr", { class: t === trait ? "current" : null }, h("td", {}, t),
          layersOf(t).map((l) => h("td", { class: "num", title: `L${l}` }, `L${l} ${num(((item.scores[t] || {})[l] || [])[i])}`)))),
        h("tr", {}, h("td", {}, "‖h‖"), layers.map((l) => h("td", { class: "num" }, `L${l} ${num((item.norms[l] || [])[i], 1)}`)))),
      massive.has(i) ? h("div", { class: "warn" }, `massive activation at L${layer} (‖h‖ ≥ ${d.massive_norm_ratio}× the median)`) : null];
    const picker = d.prompts.map((p) => [p.id, `${p.id}: ${(p.prompt || "").slice(0, 70)}`]);
    out.push(h("div", { class: "controls" },
      h("label", {}, "prompt ", select(picker, item.id, (v) => setParams({ prompt: v }, !d.items.some((it) => it.id === v)), { id: "tf-prompt" })),
      h("label", {}, " colour by ", select(traits.map((t) => [t, t]), trait, (v) => setParams({ trait: v }), { id: "tf-trait" })),
      h("label", {}, " layer ", select(layers.map((l) => [l, `L${l}`]), layer, (v) => setParams({ layer: v }), { id: "tf-layer" })),
      h("label", {}, " centre ", select([["zero", "0"], ["mean", "response mean"]], centre, (v) => setParams({ centre: v }))),
      h("label", { title: "tokens whose ‖h‖ is far above the response's median (attention sinks) swamp a raw projection" },
        h("input", { type: "checkbox", id: "tf-massive", checked: dropMassive, onchange: (e) => setParams({ massive: e.target.checked ? null : "keep" }) }),
        " leave massive activations out of the colour scale")));
    const info = d.traits[trait] || {};
    out.push(note(`${trait}: ${info.position || ""} ${info.component || ""} ${info.method || ""}; score ${d.mode}, red below / green above ${centre === "mean" ? "the response mean " + num(mean) : "0"}; ` +
      `${massive.size} massive-activation token(s) at L${layer}` + (d.massive_dims[layer] ? `; calibration's massive dims at L${layer}: ${d.massive_dims[layer].join(", ")}` : "")));
    out.push(h("p", { class: "prompt" }, h("b", {}, "prompt: "), item.prompt || ""));
    // Prompt tokens stay uncoloured (the scale is the response's) but show their scores on hover.
    out.push(tokenView(item.tokens, (i) => (i < start || (dropMassive && massive.has(i))) ? "transparent" : colour((scores[i] - mid) / scale),
      details, (i) => i < start));
    const cells = [];
    const norms = [];
    item.tokens.forEach((tok, i) => {
      if (i < start) return;
      for (const l of layers) {
        cells.push({ i, token: display(tok), layer: Number(l), score: ((item.scores[trait] || {})[l] || [])[i] });
        norms.push({ i, token: display(tok), layer: `L${l}`, norm: (item.norms[l] || [])[i] });
      }
    });
    const n = item.tokens.length - start;
    out.push(section("Tokens × layers", h("div", { class: "scroll" }, chart({
      $schema: "https://vega.github.io/schema/vega-lite/v5.json", title: `${trait}, response tokens × monitored layers`,
      data: { values: cells }, width: { step: Math.max(10, Math.min(24, Math.floor(900 / Math.max(1, n)))) }, height: { step: 24 },
      mark: "rect", encoding: { x: { field: "i", type: "ordinal", title: "response token", axis: { labelExpr: "''" } },
        y: { field: "layer", type: "ordinal" }, color: { field: "score", type: "quantitative", scale: { scheme: "redyellowgreen", domainMid: mid } },
        tooltip: ["token", "layer", { field: "score", format: ".3f" }] } })),
    h("div", { class: "scroll" }, chart({ $schema: "https://vega.github.io/schema/vega-lite/v5.json", title: "‖h‖ per response token",
      data: { values: norms }, width: Math.max(300, Math.min(900, n * 12)), height: 160, mark: { type: "line", point: true },
      encoding: { x: { field: "i", type: "quantitative", title: "token #" }, y: { field: "norm", type: "quantitative", title: "‖h‖" },
        color: { field: "layer", type: "nominal" }, tooltip: ["token", "layer", { field: "norm", format: ".1f" }] } }))));
    out.push(section("Other variants", d.variants.filter((v) => v !== d.variant).map((v) =>
      h("a", { class: "pill", href: `/${encodeURIComponent(d.experiment)}/dynamics?` +
        new URLSearchParams({ prompt_set: d.prompt_set, variant: v, prompt: item.id }).toString().replace(/%2F/g, "/") }, v))));
    return out;
  }

  function comparison(d, params) {
    const out = [h("h1", {}, `Model comparison · ${d.a} → ${d.b} on ${d.prompt_set}`)];
    if (!d.materialized) { out.push(note("variant_diff is not materialized yet.")); return out; }
    out.push(note(`${d.n_prompts} prompts; ${d.a}'s tokens run through both models; effect ${d.sign} (Cohen's d of per-prompt mean scores)`));
    out.push(section("Effect size per trait and layer", h("div", { class: "scroll" }, chart({
      $schema: "https://vega.github.io/schema/vega-lite/v5.json", data: { values: d.effects }, width: { step: 26 }, height: { step: 24 },
      mark: "rect", encoding: { x: { field: "layer", type: "ordinal" }, y: { field: "trait", type: "nominal", title: null },
        color: { field: "cohens_d", type: "quantitative", scale: { scheme: "redblue", domainMid: 0 }, title: "d (B − A)" },
        tooltip: ["trait", "layer", { field: "cohens_d", format: ".2f" }, { field: "cohens_d_paired", format: ".2f" }, { field: "cosine", format: ".2f" }, { field: "delta", format: ".2f" }] } }))));
    // Token deltas travel for one trait (the viewer fetches another's on demand) or all (the report).
    const traits = Object.keys(d.traits);
    const trait = traits.includes(params.get("trait")) && d.details[params.get("trait")] ? params.get("trait") : d.trait;
    const peak = d.traits[trait];
    const info = d.details[trait];
    const prompts = info.prompts;
    const chosen = prompts.find((p) => p.id === params.get("prompt")) || prompts[0];
    out.push(h("div", { class: "controls" },
      h("label", {}, "trait ", select(traits.map((t) => [t, `${t} (peak L${d.traits[t].layer}, d ${num(d.traits[t].cohens_d)})`]), trait,
        (v) => setParams({ trait: v, prompt: null }, !d.details[v]), { id: "tf-trait" })),
      h("label", {}, " prompt ", select(prompts.map((p) => [p.id, `${p.id}: mean Δ ${signed(p.mean_delta)}`]), chosen ? chosen.id : "", (v) => setParams({ prompt: v }), { id: "tf-prompt" }))));
    if (chosen) {
      const text = d.texts[chosen.id] || {};
      const scale = Math.max(1e-9, ...chosen.deltas.map(Math.abs));
      out.push(h("p", { class: "prompt" }, h("b", {}, "prompt: "), text.prompt || ""));
      out.push(h("div", { class: "sidebyside" },
        h("div", {}, h("h3", {}, `${d.a} (its tokens coloured by Δ ${d.sign} at L${peak.layer})`),
          tokenView(chosen.tokens, (i) => colour(chosen.deltas[i] / scale), (i) => [h("b", {}, JSON.stringify(chosen.tokens[i])), h("div", {}, `Δ ${signed(chosen.deltas[i], 3)}`)])),
        h("div", {}, h("h3", {}, `${d.b}'s own reply`), h("p", { class: "text" }, text.b == null ? "(no reply of its own: it replays)" : text.b))));
    }
    out.push(section("Top clauses across the prompt set", table([{ key: "id", label: "prompt" },
      { key: "clause", label: "clause", render: (c) => h("span", { class: "text" }, c.clause) },
      { key: "delta", label: "Δ", numeric: true, format: (x) => signed(x) }], info.top_clauses, { class: "data clauses" })));
    return out;
  }

  function benchmarks(d, params) {
    const out = [h("h1", {}, `Capability benchmarks · ${d.experiment}`)];
    if (!d.runs.length) { out.push(note("No benchmark materialized yet.")); return out; }
    for (const run of d.runs) {
      const mc = run.conditions.some((c) => c.accuracy != null);
      const cols = mc ? [{ key: "condition", label: "condition" }, { key: "accuracy", label: "accuracy", numeric: true, format: (x) => num(x, 3) },
        { key: "ci95", label: "95 % interval", render: (r) => r.ci95 ? `[${num(r.ci95[0], 3)}, ${num(r.ci95[1], 3)}]` : "—" },
        { key: "delta", label: "vs baseline", numeric: true, render: (r) => r.delta == null ? "—"
          : `${signed(r.delta, 3)} [${signed(r.delta_ci95[0], 3)}, ${signed(r.delta_ci95[1], 3)}]` },
        { key: "n", label: "items", numeric: true }]
        : [{ key: "condition", label: "condition" }, { key: "ce", label: "CE (nats/token)", numeric: true, format: (x) => num(x, 4) },
          { key: "kl", label: "KL from unsteered", numeric: true, format: (x) => num(x, 4) }, { key: "n", label: "paragraphs", numeric: true }];
      const rows = run.conditions.map((c) => Object.assign({ low: c.ci95 ? c.ci95[0] : null, high: c.ci95 ? c.ci95[1] : null }, c));
      out.push(section(`${run.benchmark} on ${run.variant}`, note(`${run.n} ${mc ? "items" : "paragraphs"} from ${run.source}` +
        (run.chat_template ? ", asked through the chat template" : "")),
      h("div", { class: "row" }, table(cols, rows, { class: "data conditions" }), mc ? chart({
        $schema: "https://vega.github.io/schema/vega-lite/v5.json", data: { values: rows }, width: 320, height: { step: 26 },
        layer: [{ mark: { type: "rule", strokeWidth: 2 }, encoding: { y: { field: "condition", type: "nominal", sort: null, title: null },
          x: { field: "low", type: "quantitative", scale: { domain: [0, 1] }, title: "accuracy" }, x2: { field: "high" } } },
        { mark: { type: "point", filled: true, size: 70 }, encoding: { y: { field: "condition", type: "nominal", sort: null },
          x: { field: "accuracy", type: "quantitative" }, tooltip: ["condition", { field: "accuracy", format: ".3f" }] } }] }) : null)));
    }
    // Items are multiple choice only (ce_loss scores paragraphs); the viewer sends the chosen run's.
    const withItems = d.runs.filter((r) => r.kind === "choice");
    const wanted = `${params.get("benchmark")}/${params.get("variant")}`;
    const key = withItems.some((r) => r.key === wanted) && d.items[wanted] ? wanted : d.chosen;
    if (!key || !d.items[key]) return out;
    const names = withItems.find((r) => r.key === key).conditions.map((c) => c.condition);
    const changedOnly = params.get("changed") === "1";
    const items = d.items[key].filter((p) => !changedOnly || new Set(Object.values(p.pred)).size > 1);
    const pick = (p, c) => { const i = p.pred[c]; return h("span", { class: i === p.label ? "right" : "wrong" }, (i === p.label ? "✓ " : "✗ ") + p.choices[i]); };
    out.push(section("Items", h("div", { class: "controls" },
      h("label", {}, "benchmark ", select(withItems.map((r) => [r.key, `${r.benchmark} on ${r.variant}`]), key, (v) => {
        const [b, variant] = v.split("/"); setParams({ benchmark: b, variant }, !d.items[v]);
      }, { id: "tf-benchmark" })),
      h("label", {}, h("input", { type: "checkbox", id: "tf-changed", checked: changedOnly, onchange: (e) => setParams({ changed: e.target.checked ? "1" : null }) }),
        " only items a condition changed")),
    note(`${items.length} of ${d.items[key].length} items`),
    table([{ key: "context", label: "item", render: (p) => h("span", { class: "text" }, p.context) },
      { key: "label", label: "right answer", render: (p) => h("span", { class: "text" }, p.choices[p.label]) },
      ...names.map((c) => ({ key: c, label: c, value: (p) => p.pred[c] === p.label ? 1 : 0, render: (p) => pick(p, c) }))],
    items, { class: "data items" })));
    return out;
  }

  // ------------------------------------------------------------------ live chat
  function liveChat(d) {
    const out = [h("h1", {}, `Live chat · ${d.experiment}`)];
    if (REPORT) { out.push(note("Live chat needs a running model: open it in `traitflow view`.")); return out; }
    if (!d.server) { out.push(note(`No model server runs for this project. Start one: traitflow serve --variants ${"VARIANT"}; then reload.`)); return out; }
    if (!d.variants.length) { out.push(note("The running model server holds none of this experiment's variants.")); return out; }
    const ready = d.traits.filter((t) => t.ready);
    const state = { messages: [], busy: false };
    const coefs = new Map(), thresholds = new Map();
    let colourBy = ready.length ? ready[0].trait : null;
    const variant = select(d.variants.map((v) => [v, v]), d.variants[0], () => {}, { id: "tf-variant" });
    const log = h("div", { class: "chatlog", id: "tf-chatlog" });
    const input = h("textarea", { id: "tf-input", rows: 2, placeholder: "Say something…" });
    const system = h("input", { id: "tf-system", type: "text", placeholder: "system prompt (optional)" });
    const maxTokens = h("input", { id: "tf-max-tokens", type: "number", min: 1, max: 1024, value: 48 });
    const sliders = ready.map((t) => {
      const span = Math.max(1, Math.abs(t.coefficient || 10)) * 2;
      const label = h("span", { class: "num" }, "0");
      const slider = h("input", { type: "range", min: -span, max: span, step: span / 100, value: 0, "data-trait": t.trait, class: "steer",
        oninput: (e) => { coefs.set(t.trait, Number(e.target.value)); label.textContent = num(Number(e.target.value), 1); } });
      const thr = h("input", { type: "number", class: "threshold", "data-trait": t.trait, placeholder: "flag |score| >", step: "any",
        onchange: (e) => { if (e.target.value === "") thresholds.delete(t.trait); else thresholds.set(t.trait, Number(e.target.value)); } });
      return h("tr", {}, h("td", {}, h("label", {}, h("input", { type: "radio", name: "colour", checked: t.trait === colourBy, onchange: () => { colourBy = t.trait; } }), " ", t.trait)),
        h("td", {}, `L${t.layer} ${t.method}`), h("td", {}, slider), h("td", {}, label), h("td", {}, thr));
    });
    const send = h("button", { id: "tf-send", onclick: () => ask() }, "Send");
    const status = h("span", { class: "note", id: "tf-status" });
    async function ask() {
      const text = input.value.trim();
      if (!text || state.busy) return;
      state.busy = true; send.disabled = true; status.textContent = "generating…";
      state.messages.push({ role: "user", content: text });
      log.append(h("div", { class: "msg user" }, h("b", {}, "you: "), text));
      input.value = "";
      const reply = h("div", { class: "msg assistant tokens" }, h("b", {}, "model: "));
      const flags = h("div", { class: "flags" });
      log.append(reply, flags);
      const steer = [...coefs.entries()].filter(([, c]) => c !== 0).map(([t, c]) => `${t}:${c}`);
      let monitors = [], running = 0, first = null;
      const t0 = performance.now();
      try {
        const response = await fetch(`/api/${encodeURIComponent(d.experiment)}/chat`, { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ variant: variant.value, messages: state.messages, system: system.value || null, steer, max_new_tokens: Number(maxTokens.value) }) });
        if (!response.ok) throw new Error((await response.json()).error || response.statusText);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "", done = null;
        for (;;) {
          const { value, done: end } = await reader.read();
          if (end) break;
          buffer += decoder.decode(value, { stream: true });
          let nl;
          while ((nl = buffer.indexOf("\n")) >= 0) {
            const event = JSON.parse(buffer.slice(0, nl)); buffer = buffer.slice(nl + 1);
            if (event.error) throw new Error(event.error);
            if (event.monitors) { monitors = event.monitors; if (event.steering.length) reply.append(h("small", { class: "note" }, event.steering.join("; ") + " ")); }
            if (event.token !== undefined) {
              if (first === null) first = performance.now() - t0;
              const ti = Math.max(0, monitors.findIndex((m) => m.trait === colourBy));
              const dev = event.scores[ti] - (monitors[ti] ? monitors[ti].midpoint : 0);
              running = Math.max(running, Math.abs(dev));
              const hits = monitors.map((m, k) => [m.trait, event.scores[k]]).filter(([t, s]) => thresholds.has(t) && Math.abs(s) > thresholds.get(t));
              const scores = event.scores;
              const span = h("span", { class: "tok" + (hits.length ? " flagged" : ""), style: `background:${colour(dev / Math.max(running, 1e-9))}`,
                title: monitors.map((m, k) => `${m.trait} L${m.layer}: ${signed(scores[k], 3)}`).join("\n") }, event.token);
              reply.append(span);
              for (const [t, s] of hits) flags.append(h("div", {}, `flag: ${JSON.stringify(event.token)} ${t} ${signed(s, 2)} ${s > 0 ? "▲" : "▼"}`));
            }
            if (event.done) done = event.done;
          }
        }
        if (!done) throw new Error("the model server stopped before the reply ended");
        state.messages.push({ role: "assistant", content: done.text });
        reply.dataset.text = done.text;
        const n = done.response_ids.length, total = performance.now() - t0;
        status.textContent = `${n} tokens; first after ${num(first, 0)} ms; ${num(n / (total / 1000), 1)} tokens/s`;
      } catch (e) {
        state.messages.pop();
        reply.append(h("span", { class: "error" }, ` [${e.message}]`));
        status.textContent = "failed";
      } finally { state.busy = false; send.disabled = false; }
    }
    input.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); ask(); } });
    out.push(h("div", { class: "controls" }, h("label", {}, "variant ", variant), h("label", {}, " max tokens ", maxTokens), " ", system));
    out.push(section("Steer and watch", ready.length ? h("table", { class: "data steerers" },
      h("tr", {}, h("th", {}, "colour by / trait"), h("th", {}, "best vector"), h("th", {}, "coefficient"), h("th", {}, ""), h("th", {}, "flag above")), sliders)
      : note("No trait has a vector yet.")));
    out.push(log, h("div", { class: "composer" }, input, send, h("button", { onclick: () => { state.messages = []; log.replaceChildren(); } }, "New chat"), status));
    return out;
  }

  window.addEventListener("hashchange", () => { if (REPORT) render(); });
  render();
})();
