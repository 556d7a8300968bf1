// Runner (docs/runner.md): pick a job, set its args, Start; the output streams into the
// terminal pane (stderr in another colour); Stop; the final status and duration. The
// current run and its terminal survive a reload (saved.js): `seq` on run.output tells
// which batches the terminal has, so a replay continues it without a gap or a repeat,
// and a gap, if one ever happens, is shown where it is.

import { $, duration, el, number, showError } from "./dom.js";
import { buildFields, FieldError, readFields } from "./forms.js";
import { keepEarly } from "./early.js";
import { Terminal } from "./terminal.js";

const FINAL = new Set(["completed", "stopped", "failed", "timeout"]);
const MISSED = "[… missed output …]";
// What a reload keeps of the terminal: as many lines as it shows, in fewer characters
// than saved.js allows in all.
const SAVED_LINES = 5000;
const SAVED_CHARS = 400_000;
const SIGNALS = { 2: "SIGINT", 9: "SIGKILL", 15: "SIGTERM" };

// What a run's exit code adds to its final status. A clean exit adds nothing: a job
// stopped on request usually ends with 0, and "exit 0" beside "stopped" reads as success.
// Negative codes are the signal that ended the job (docs/runner.md).
function exitNote(code) {
  if (code === null || code === undefined || code === 0) return null;
  if (code < 0) return `killed by ${SIGNALS[-code] || `signal ${-code}`}`;
  return `exit ${code}`;
}

export class RunnerPanel {
  constructor(app) {
    this.app = app;
    this.form = $("run-form");
    this.jobSelect = $("run-job");
    this.args = $("run-args");
    this.description = $("run-description");
    this.startButton = $("run-start");
    this.stopButton = $("run-stop");
    this.status = $("run-status");
    this.info = $("run-info");
    this.error = $("run-error");
    this.terminal = new Terminal($("terminal"), { maxLines: 5000, onFlush: () => this.render() });
    this.jobs = new Map();
    this.run = null;
    this.early = new Map();
    this.ticker = 0;
    this.jobSelect.addEventListener("change", () => this.jobChanged());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.start();
    });
    this.stopButton.addEventListener("click", () => this.stop());
  }

  reset() {
    clearInterval(this.ticker);
    this.terminal.clear();
    this.run = null;
    this.early.clear();
    showError(this.error, null);
    this.setBusy(false);
    this.render();
  }

  setCatalog(jobs) {
    this.jobs = new Map(jobs.map((job) => [job.name, job]));
    const chosen = this.jobSelect.value || "lines";
    this.jobSelect.replaceChildren(...jobs.map((job) => el("option", { value: job.name, text: job.name })));
    if (this.jobs.has(chosen)) this.jobSelect.value = chosen;
    this.jobChanged();
  }

  jobChanged() {
    const job = this.jobs.get(this.jobSelect.value);
    if (!job) return;
    this.description.textContent = job.description;
    buildFields(this.args, job.args, "arg");
  }

  setBusy(busy) {
    this.startButton.disabled = busy;
    this.jobSelect.disabled = busy;
    this.stopButton.disabled = !busy;
  }

  async start() {
    showError(this.error, null);
    let args;
    try {
      args = readFields(this.args);
    } catch (error) {
      if (!(error instanceof FieldError)) throw error;
      showError(this.error, error);
      return;
    }
    const job = this.jobSelect.value;
    this.terminal.clear();
    this.terminal.note(`$ ${job} ${JSON.stringify(args)}`);
    this.run = { id: null, job, status: "starting", lines: { stdout: 0, stderr: 0 }, began: Date.now(), final: null, seq: -1 };
    this.setBusy(true);
    this.tick();
    try {
      const ack = await this.app.warren.command("run.start", { job, args });
      this.run.id = ack.id;
      for (const envelope of this.early.get(ack.id) || []) this.handle(envelope);
      this.early.delete(ack.id);
    } catch (error) {
      this.refused(error);
    }
  }

  async stop() {
    const run = this.run;
    if (!run || !run.id || run.final) return;
    run.status = "stopping";
    this.render();
    try {
      await this.app.warren.command("run.stop", { run_id: run.id });
    } catch (error) {
      showError(this.error, error);
    }
  }

  refused(error) {
    this.run.status = "refused";
    this.run.final = {};
    showError(this.error, error);
    this.terminal.note(`[refused] ${error.code}: ${error.message}`);
    this.finished();
  }

  handle(envelope) {
    const data = envelope.data || {};
    const id = envelope.type === "run.error" ? data.command_id : data.run_id;
    const run = this.run;
    if (!run || !run.id) {
      keepEarly(this.early, id, envelope);
      return;
    }
    if (id !== run.id && data.run_id !== run.id) return;  // another tab's run
    if (envelope.type === "run.queued") {
      run.status = "queued";
    } else if (envelope.type === "run.started") {
      run.status = "running";
      run.replica = data.replica;
    } else if (envelope.type === "run.output") {
      if (Number.isInteger(data.seq)) {
        if (data.seq <= run.seq) return;  // shown already: replayed after a reload
        if (data.seq > run.seq + 1) this.terminal.note(MISSED);
        run.seq = data.seq;
      }
      const stream = data.stream === "stderr" ? "stderr" : "stdout";
      this.terminal.write(stream, data.lines);
      run.lines[stream] += data.lines.length;
      return;  // the terminal's next frame renders the counts
    } else if (envelope.type === "run.finished") {
      this.finish(data);
    } else if (envelope.type === "run.error") {
      if (data.command === "run.stop") showError(this.error, data);
      else this.refused(data);
    }
    this.render();
  }

  finish(summary) {
    const run = this.run;
    if (run.final) return;
    run.status = summary.status;
    run.final = summary;
    const why = summary.reason ? ` (${summary.reason})` : "";
    this.terminal.note(`[${summary.status} in ${duration(summary.duration_s || 0)}]${why}`);
    this.finished();
  }

  finished() {
    clearInterval(this.ticker);
    this.setBusy(false);
    this.render();
  }

  tick() {
    clearInterval(this.ticker);
    this.ticker = setInterval(() => this.render(), 250);
  }

  // After a connection that did not recover what it missed: the runs table has the
  // truth. A run that ended meanwhile is finished from it, with the lines it printed that
  // this terminal never got counted; one still running goes on, and its next run.output
  // shows the gap by its seq.
  async reconnected() {
    const run = this.run;
    if (!run || !run.id || run.final) return;
    try {
      const summary = await this.app.api(`/api/runs/${encodeURIComponent(run.id)}?tail=0`);
      if (this.run !== run || run.final || !FINAL.has(summary.status)) return;
      const missed = summary.lines - run.lines.stdout - run.lines.stderr;
      if (missed > 0) {
        run.missed = missed;
        this.terminal.note(`[… ${number(missed)} ${missed === 1 ? "line" : "lines"} of output missed …]`);
      }
      this.finish(summary);
    } catch {
      // not recorded yet: still queued
    }
  }

  // What a reload would lose (saved.js).
  snapshot() {
    const run = this.run;
    if (!run) return null;
    const { id, job, status, lines, missed, began, final, replica, seq } = run;
    return {
      id, job, status, lines, missed: missed || 0, began, final, replica: replica || null, seq,
      terminal: this.terminal.snapshot(SAVED_LINES, SAVED_CHARS),
    };
  }

  restore(saved) {
    if (!saved || typeof saved !== "object") return;
    for (const { stream, lines } of Array.isArray(saved.terminal) ? saved.terminal : []) {
      if (Array.isArray(lines)) this.terminal.write(String(stream), lines.map(String));
    }
    if (saved.cut) this.terminal.note("[… the output before the reload was too large to keep …]");
    const lines = saved.lines || {};
    this.run = {
      id: typeof saved.id === "string" ? saved.id : null,
      job: String(saved.job || ""),
      status: String(saved.status || "unknown"),
      lines: { stdout: Number(lines.stdout) || 0, stderr: Number(lines.stderr) || 0 },
      missed: Number(saved.missed) || 0,
      began: Number(saved.began) || Date.now(),
      final: saved.final && typeof saved.final === "object" ? saved.final : null,
      replica: saved.replica || undefined,
      seq: Number.isInteger(saved.seq) ? saved.seq : -1,
    };
    if (!this.run.final && !this.run.id) {
      // Reloaded before the runner's ack: this page cannot tell the run's events apart.
      this.run.status = "unknown";
      this.run.final = {};
      this.terminal.note("[the page was reloaded before the run was acknowledged: its output is not shown here]");
    }
    if (!this.run.final) {
      this.setBusy(true);
      this.tick();
    }
    this.render();
  }

  render() {
    const run = this.run;
    this.status.dataset.state = run ? run.status : "idle";
    this.status.textContent = run ? run.status : "idle";
    if (!run) {
      this.info.textContent = "No run yet.";
      return;
    }
    const { stdout, stderr } = run.lines;
    const total = stdout + stderr + (run.missed || 0);
    const parts = [`${number(total)} ${total === 1 ? "line" : "lines"}`];
    if (run.missed) parts.push(`${number(run.missed)} missed`);
    if (stderr) parts.push(`${number(stderr)} on stderr`);
    if (run.final && run.final.duration_s !== undefined) {
      parts.push(`${run.status} in ${duration(run.final.duration_s)}`);
      const exit = exitNote(run.final.exit_code);
      if (exit) parts.push(exit);
    } else if (!run.final) {
      parts.push(duration((Date.now() - run.began) / 1000));
    }
    if (run.replica) parts.push(`on ${run.replica}`);
    this.info.textContent = parts.join(" · ");
  }
}
