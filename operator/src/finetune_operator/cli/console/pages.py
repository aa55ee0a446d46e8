"""The console's pages as HTML, rendered on the server from what the CLI reads (``Kube``, ``Store``, ``reads``).

Each page function returns a ``Page``: its title, the HTML of its live part (re-fetched every few seconds with
``?fragment=1`` while ``live`` is true, so a running job's curve and progress move without a reload) and the
HTML that stays (the playground's form, the YAML).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from finetune_operator.cli.base import CliError
from finetune_operator.cli.console.charts import interval_bar, loss_chart
from finetune_operator.cli.output import age, duration, size

TERMINAL = {"Completed", "Failed", "Cancelled", "Invalid"}


@dataclass
class Page:
    title: str
    live: str
    """Refreshed in place while ``refresh`` is set."""
    static: str = ""
    refresh: bool = False
    section: str = ""


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def badge(phase: str | None) -> str:
    phase = phase or "Pending"
    return f'<span class="badge phase-{e(phase.lower())}">{e(phase)}</span>'


def progress_bar(percent: int | None, label: str = "") -> str:
    percent = max(0, min(100, int(percent or 0)))
    return (f'<div class="progress" role="progressbar" aria-valuenow="{percent}" aria-valuemin="0" aria-valuemax="100">'
            f'<div class="fill" style="width:{percent}%"></div><span>{e(label or f"{percent}%")}</span></div>')  # fmt: skip


def table(headers: list[str], rows: list[list[str]], cls: str = "", empty: str = "Nothing here yet.") -> str:
    if not rows:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def fields(pairs: list[tuple[str, str | None]]) -> str:
    items = "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in pairs if v not in (None, ""))
    return f'<dl class="fields">{items}</dl>'


def num(value: Any, digits: int = 4) -> str | None:
    return None if value is None else f"{float(value):.{digits}g}"


def notice(text: str, cls: str = "warning") -> str:
    return f'<p class="notice {cls}">{e(text)}</p>'


def clean_yaml(obj: dict[str, Any]) -> str:
    import yaml

    shown = {**obj, "metadata": {k: v for k, v in obj.get("metadata", {}).items() if k != "managedFields"}}
    return yaml.safe_dump(shown, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------------------------------ jobs


def jobs_list(ctx: Any) -> Page:
    jobs = ctx.kube.list("finetunejobs")
    rows = []
    for job in jobs:
        status = job.get("status") or {}
        progress = status.get("progress") or {}
        name = job["metadata"]["name"]
        rows.append([
            f'<a href="/jobs/{e(name)}">{e(name)}</a>', badge(status.get("phase")),
            progress_bar(progress.get("percent"), progress.get("summary") or ""),
            e(((job.get("spec") or {}).get("baseModel") or {}).get("uri")), e((status.get("outputModel") or {}).get("name") or "-"), e(age(job)),
        ])  # fmt: skip
    body = table(["Name", "Phase", "Progress", "Base model", "Output model", "Age"], rows, "list", f"No fine-tuning jobs in namespace {ctx.kube.namespace}.")
    return Page("Fine-tuning jobs", body, refresh=True, section="jobs")


def job_page(ctx: Any, name: str) -> Page:
    from finetune_operator.cli.reads import job_artifacts, learning_curve, merged_events

    job = ctx.kube.get("finetunejobs", name)
    spec, status = job.get("spec") or {}, job.get("status") or {}
    progress = status.get("progress") or {}
    phase = status.get("phase") or "Pending"
    store, store_problem = ctx.store()
    curve: list[Any] = []
    events: list[Any] = []
    try:
        if store is not None:
            curve = learning_curve(store, job)
        events = merged_events(ctx.kube, store, "FineTuneJob", job)
    except CliError as error:
        store_problem = str(error)

    parts = [f'<div class="title-row"><h1>{e(name)}</h1>{badge(phase)}<div class="actions">']
    if phase not in TERMINAL:
        parts.append(f'<button id="cancel" class="danger" data-action="/jobs/{e(name)}/cancel" data-confirm="Cancel {e(name)}? Its checkpoints are kept.">Cancel</button>')
    if phase == "Completed":
        parts.append(f'<a id="download" class="button" href="/jobs/{e(name)}/download" download>Download model</a>')
    parts.append("</div></div>")
    if status.get("message"):
        parts.append(f'<p class="message">{e(status["message"])}</p>')
    parts.append(progress_bar(progress.get("percent"), progress.get("summary") or phase))
    eta = duration(progress.get("etaSeconds")) if phase == "Running" and progress.get("etaSeconds") is not None else None
    parts.append('<div class="stats">' + "".join(
        f'<div class="stat"><span class="k">{k}</span><span class="v" id="stat-{k.lower().replace(" ", "-").replace("/", "")}">{e(v)}</span></div>'
        for k, v in (("Step", f"{progress.get('step', 0)}/{progress.get('totalSteps') or '?'}"), ("Epoch", num(progress.get("epoch"), 3) or "-"),
                     ("Train loss", num(progress.get("trainLoss")) or "-"), ("Eval loss", num(progress.get("evalLoss")) or "-"),
                     ("Tokens/s", f"{progress['tokensPerSecond']:.0f}" if progress.get("tokensPerSecond") else "-"), ("ETA", eta or "-"))
    ) + "</div>")  # fmt: skip
    parts.append('<section><h2>Loss</h2>')
    if store_problem:
        parts.append(notice(f"The learning curve and the trainer's events come from the object store: {store_problem}"))
    parts.append(loss_chart(curve, progress.get("totalSteps")))
    parts.append("</section>")

    model = status.get("outputModel") or {}
    parts.append("<section><h2>Details</h2>" + fields([
        ("Base model", e((spec.get("baseModel") or {}).get("uri"))),
        ("Dataset", f'<a href="/datasets/{e(spec.get("dataset"))}">{e(spec.get("dataset"))}</a>'),
        ("Method", e(spec.get("method", "lora"))),
        ("Hyperparameters", e(", ".join(f"{k} {v}" for k, v in (spec.get("hyperparameters") or {}).items()) or "defaults")),
        ("Output model", e(model.get("name"))),
        ("Output URI", e(model.get("uri"))),
        ("Started", e(status.get("startTime"))),
        ("Ended", e(status.get("completionTime"))),
    ]) + "</section>")  # fmt: skip

    rows = []
    for artifact in job_artifacts(job):
        query = f"?checkpoint={artifact.step}" if artifact.label == "checkpoint" else ("?merged=1" if artifact.label == "merged" else "")
        link = f'<a class="download-link" href="/jobs/{e(name)}/download{query}" download>download</a>'
        rows.append([e(artifact.label), e(artifact.step if artifact.step is not None else progress.get("totalSteps") or "final"), f"<code>{e(artifact.uri)}</code>", link])
    parts.append("<section><h2>Checkpoints</h2>" + table(["Type", "Step", "URI", ""], rows, "checkpoints", "No checkpoint uploaded yet.") + "</section>")

    event_rows = [[e(ev.time.strftime("%H:%M:%S") if ev.time else "-"), e(ev.source), f'<span class="type-{e(ev.type.lower())}">{e(ev.type)}</span>',
                   e(ev.reason), e(ev.message)] for ev in events]  # fmt: skip
    parts.append('<section><h2>Events</h2>' + table(["Time", "Source", "Type", "Reason", "Message"], event_rows, "events", "No events yet.") + "</section>")
    static = f'<details class="yaml"><summary>YAML</summary><pre id="yaml">{e(clean_yaml(job))}</pre></details>'
    return Page(name, "".join(parts), static, refresh=phase not in TERMINAL, section="jobs")


# ------------------------------------------------------------------------------------------------ datasets


def datasets_list(ctx: Any) -> Page:
    rows = []
    for ds in ctx.kube.list("datasets"):
        status = ds.get("status") or {}
        name = ds["metadata"]["name"]
        rows.append([f'<a href="/datasets/{e(name)}">{e(name)}</a>', badge(status.get("phase")), e(status.get("numSamples") or "-"),
                     e(status.get("trainSamples") or "-"), e(status.get("validationSamples") or "-"), e(status.get("format") or "-"), e(age(ds))])  # fmt: skip
    body = table(["Name", "Phase", "Samples", "Train", "Validation", "Format", "Age"], rows, "list", f"No datasets in namespace {ctx.kube.namespace}.")
    return Page("Datasets", body, refresh=True, section="datasets")


def _check(value: bool | None) -> str:
    if value is None:
        return '<span class="muted">-</span>'
    return '<span class="pass">✓ ok</span>' if value else '<span class="fail">✗ failed</span>'


def dataset_page(ctx: Any, name: str) -> Page:
    ds = ctx.kube.get("datasets", name)
    spec, status = ds.get("spec") or {}, ds.get("status") or {}
    report = status.get("report") or {}
    phase = status.get("phase") or "Pending"
    parts = [f'<div class="title-row"><h1>{e(name)}</h1>{badge(phase)}</div>']
    if status.get("message"):
        parts.append(f'<p class="message">{e(status["message"])}</p>')
    source = spec.get("source") or {}
    parts.append(fields([
        ("Source", f"<code>{e(source.get('uri') or 'configMap ' + str((source.get('configMapRef') or {}).get('name')))}</code>"),
        ("Format", e(status.get("format") or spec.get("format"))),
        ("Samples", e(None if status.get("numSamples") is None else f"{status['numSamples']} ({status.get('trainSamples')} train, {status.get('validationSamples') or 0} validation)")),
        ("SHA256", f"<code>{e(status.get('sha256'))}</code>" if status.get("sha256") else None),
        ("File size", e(size(report.get("fileSize"))) if report.get("fileSize") is not None else None),
    ]))  # fmt: skip
    if report:
        checks = [["File found", _check(report.get("found"))], ["UTF-8", _check(report.get("utf8"))], ["One JSON object per line", _check(report.get("lineType"))],
                  ["Keys and values of the format", _check(report.get("keyValue"))],
                  [f"At least {spec.get('minSamples', 10)} samples", _check(report.get("hasMinSamples"))]]  # fmt: skip
        verdict = '<span class="pass">PASSED</span>' if report.get("isCheckPassed") else '<span class="fail">FAILED</span>'
        parts.append(f'<section><h2>Check report</h2><p id="verdict">{verdict} {e(report.get("message"))}</p>'
                     + table(["Check", "Result"], checks, "report") + "</section>")  # fmt: skip
        errors = [[e(x.get("line") if x.get("line") is not None else "-"), f"<code>{e(x.get('rule'))}</code>", e(x.get("message"))] for x in report.get("errors") or []]
        if errors:
            more = report.get("errorCount", len(errors)) - len(errors)
            parts.append("<section><h2>First errors</h2>" + table(["Line", "Rule", "Message"], errors, "errors")
                         + (f'<p class="muted">… and {more} more</p>' if more > 0 else "") + "</section>")  # fmt: skip
    stats = [(label, status.get(key)) for label, key in (("Tokens per example", "tokenStats"), ("Messages per example", "messageStats")) if status.get(key)]
    if stats:
        rows = [[e(label), e(s["min"]), e(f"{s['mean']:.4g}"), e(s["max"]), e(f"{s['total']:,}")] for label, s in stats]
        parts.append('<section><h2>Statistics</h2>' + table(["", "Min", "Mean", "Max", "Total"], rows, "stats") + "</section>")
    elif report:
        parts.append('<section><h2>Statistics</h2><p class="muted">No token statistics: name a tokenizer in spec.tokenizer to count tokens.</p></section>')
    static = f'<details class="yaml"><summary>YAML</summary><pre>{e(clean_yaml(ds))}</pre></details>'
    return Page(name, "".join(parts), static, refresh=phase not in TERMINAL and phase != "Ready", section="datasets")


# ------------------------------------------------------------------------------------------------ evaluations


def evaluations_list(ctx: Any) -> Page:
    rows = []
    for ev in ctx.kube.list("evaluations"):
        status = ev.get("status") or {}
        name = ev["metadata"]["name"]
        passed = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Passed"), None)
        rows.append([f'<a href="/evaluations/{e(name)}">{e(name)}</a>', badge(status.get("phase")), e(status.get("headline") or "-"),
                     e({"True": "passed", "False": "not passed"}.get(passed or "", "-")), e((ev.get("spec") or {}).get("dataset")), e(age(ev))])  # fmt: skip
    body = table(["Name", "Phase", "Score", "Pass criterion", "Dataset", "Age"], rows, "list", f"No evaluations in namespace {ctx.kube.namespace}.")
    return Page("Evaluations", body, refresh=True, section="evaluations")


def _verdict(score: float) -> str:
    if score >= 1:
        return "pass"
    return "fail" if score <= 0 else "partial"


def evaluation_page(ctx: Any, name: str, samples: int) -> Page:
    from finetune_operator.cli.reads import evaluation_samples, grader_names, model_order

    ev = ctx.kube.get("evaluations", name)
    spec, status = ev.get("spec") or {}, ev.get("status") or {}
    phase = status.get("phase") or "Pending"
    models, graders = model_order(ev), grader_names(ev)
    baseline = spec.get("baseline")
    parts = [f'<div class="title-row"><h1>{e(name)}</h1>{badge(phase)}</div>']
    if status.get("message"):
        parts.append(f'<p class="message">{e(status["message"])}</p>')
    scores = {(s["model"], s["grader"]): s for s in status.get("scores") or []}
    if scores:
        rows = []
        for model in models:
            cells = [f"<strong>{e(model)}</strong>" + (' <span class="muted">(baseline)</span>' if model == baseline else "")]
            for grader in graders:
                s = scores.get((model, grader))
                if s is None or s.get("mean") is None:
                    cells.append('<span class="muted">n/a</span>')
                    continue
                delta = s.get("delta")
                delta_html = "" if delta is None else f' <span class="delta {"up" if delta > 0 else "down" if delta < 0 else ""}">{delta:+.3f}</span>'
                base = scores.get((baseline, grader), {}).get("mean") if baseline and model != baseline else None
                ci = f' <span class="ci-text">[{s["ciLow"]:.3f}, {s["ciHigh"]:.3f}]</span>' if s.get("ciLow") is not None and s.get("ciHigh") is not None else ""
                errors = f' <span class="fail">({s["errors"]} errors)</span>' if s.get("errors") else ""
                cells.append(f'<span class="score">{s["mean"]:.3f}</span>{ci}{delta_html}{errors}<br>{interval_bar(s["mean"], s.get("ciLow"), s.get("ciHigh"), base)}')
            rows.append(cells)
        parts.append("<section><h2>Scores</h2>" + table(["Model", *graders], rows, "scores")
                     + f'<p class="muted">{e(status.get("samples"))} samples per model; mean [95% interval]; ± the difference from the baseline.</p></section>')  # fmt: skip
    passed = next((c for c in status.get("conditions") or [] if c.get("type") == "Passed"), None)
    if passed is not None:
        cls = "pass" if passed.get("status") == "True" else "fail"
        parts.append(f'<p id="pass-criterion" class="{cls}">Pass criterion {"met" if cls == "pass" else "not met"}: {e(passed.get("message"))}</p>')

    sample_parts: list[str] = []
    if status.get("resultsUri"):
        store, problem = ctx.store()
        try:
            found = evaluation_samples(store, ev, samples) if store is not None else []
        except CliError as error:
            found, problem = [], str(error)
        if problem:
            sample_parts.append(notice(f"The answers come from the object store: {problem}"))
        choices = "".join(f'<a class="{"on" if n == samples else ""}" href="?samples={n}">{n}</a>' for n in (10, 20, 50, 100))
        sample_parts.append(f'<section id="samples"><h2>Answers side by side</h2><p class="muted">The first {len(found)} samples · show {choices}</p>')
        for sample in found:
            cols = []
            for model in models:
                answer = sample.answers.get(model)
                if answer is None:
                    cols.append(f'<div class="answer"><h4>{e(model)}</h4><p class="muted">(not answered)</p></div>')
                    continue
                text = answer["response"] if answer["response"] is not None else f"(error: {answer.get('error') or 'no answer'})"
                verdicts = "".join(
                    f'<span class="verdict {_verdict(answer["scores"][g])}" data-grader="{e(g)}">{"✓" if answer["scores"][g] >= 1 else "✗" if answer["scores"][g] <= 0 else "~"} {e(g)} {answer["scores"][g]:.2f}</span>'
                    if g in answer["scores"] else f'<span class="verdict error" data-grader="{e(g)}">! {e(g)}: {e(answer["errors"].get(g, "not graded"))}</span>'
                    for g in graders
                )  # fmt: skip
                cols.append(f'<div class="answer" data-model="{e(model)}"><h4>{e(model)}</h4><p class="response">{e(text)}</p><div class="verdicts">{verdicts}</div></div>')
            sample_parts.append(
                f'<article class="sample" data-example="{sample.example}"><div class="prompt"><span class="k">Sample {sample.example + 1}</span>'
                f'<p>{e(sample.prompt)}</p><p class="reference"><span class="k">Reference</span> {e(sample.reference)}</p></div>'
                f'<div class="answers" style="grid-template-columns: repeat({len(models)}, 1fr)">{"".join(cols)}</div></article>'
            )
        sample_parts.append("</section>")
    static = "".join(sample_parts) + f'<details class="yaml"><summary>YAML</summary><pre>{e(clean_yaml(ev))}</pre></details>'
    return Page(name, "".join(parts), static, refresh=phase not in TERMINAL, section="evaluations")


# ------------------------------------------------------------------------------------------------ endpoints


def endpoints_list(ctx: Any) -> Page:
    rows = []
    for ep in ctx.kube.list("inferenceendpoints"):
        status = ep.get("status") or {}
        name = ep["metadata"]["name"]
        wanted = ((ep.get("spec") or {}).get("replicas") or {}).get("min", 1)
        rows.append([f'<a href="/endpoints/{e(name)}">{e(name)}</a>', badge(status.get("phase")), e(f"{status.get('readyReplicas', 0)}/{wanted}"),
                     e(", ".join(status.get("models") or []) or "-"), e(status.get("runtime") or "-"), e(age(ep))])  # fmt: skip
    body = table(["Name", "Phase", "Ready", "Models", "Runtime", "Age"], rows, "list", f"No inference endpoints in namespace {ctx.kube.namespace}.")
    return Page("Inference endpoints", body, refresh=True, section="endpoints")


def endpoint_page(ctx: Any, name: str) -> Page:
    ep = ctx.kube.get("inferenceendpoints", name)
    spec, status = ep.get("spec") or {}, ep.get("status") or {}
    phase = status.get("phase") or "Pending"
    key = spec.get("apiKeySecretRef")
    parts = [f'<div class="title-row"><h1>{e(name)}</h1>{badge(phase)}</div>']
    if status.get("message"):
        parts.append(f'<p class="message">{e(status["message"])}</p>')
    parts.append(fields([
        ("Served models", " ".join(f'<code class="model">{e(m)}</code>' for m in status.get("models") or []) or "-"),
        ("Ready replicas", f'<span id="ready-replicas">{e(status.get("readyReplicas", 0))}</span> of {e(status.get("replicas", 0))}'),
        ("Base model", f"<code>{e((spec.get('baseModel') or {}).get('uri'))}</code>"),
        ("Runtime", e(status.get("runtime") or spec.get("runtime"))),
        ("URL in the cluster", f"<code>{e(status.get('url'))}</code>" if status.get("url") else None),
        ("API key", e(f"Secret {key['name']}") if key else "none"),
    ]))  # fmt: skip
    adapters = [[e(a.get("name")), '<span class="pass">served</span>' if a.get("ready") else f'<span class="fail">{e(a.get("reason"))}</span>',
                 e(a.get("message") or "")] for a in status.get("adapters") or []]  # fmt: skip
    if adapters:
        parts.append("<section><h2>Adapters</h2>" + table(["Name", "State", "Message"], adapters, "adapters") + "</section>")
    options = "".join(f'<option value="{e(m)}">{e(m)}</option>' for m in status.get("models") or [])
    disabled = "" if phase == "Ready" else " disabled"
    static = f"""
<section id="playground"><h2>Playground</h2>
<form id="chat-form" data-endpoint="/endpoints/{e(name)}/chat">
  <div class="row"><label>Model <select id="chat-model" name="model">{options}</select></label>
  <label>Max tokens <input id="chat-max-tokens" name="max_tokens" type="number" min="1" max="4096" value="64"></label>
  <label>Temperature <input id="chat-temperature" name="temperature" type="number" min="0" max="2" step="0.1" value="0"></label></div>
  <label>System prompt<textarea id="chat-system" name="system" rows="2" placeholder="optional"></textarea></label>
  <label>Message<textarea id="chat-prompt" name="prompt" rows="3" required></textarea></label>
  <button id="chat-send" type="submit"{disabled}>Send</button> <span id="chat-state" class="muted"></span>
</form>
<div id="chat-log"></div>
</section>
<details class="yaml"><summary>YAML</summary><pre>{e(clean_yaml(ep))}</pre></details>"""
    return Page(name, "".join(parts), static, refresh=phase != "Ready", section="endpoints")


def error_page(message: str) -> Page:
    return Page("Error", f'<h1>Cannot show this</h1><p class="notice error" id="error">{e(message)}</p>')

