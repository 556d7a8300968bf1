// Runner (docs/runner.md): pick a job, set its args, Start; the output streams into the
// terminal pane (stderr in another colour); Stop; the final status and duration.

import { $, duration, el, number, showError } from "./dom.js";
import { buildFields, FieldError, readFields } from "./forms.js";
import { keepEarly } from "./early.js";
import { Terminal } from "./terminal.js";

const FINAL = new Set(["completed", "stopped", "failed", "timeout"]);
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
    this.run = { id: null, job, status: "starting", lines: { stdout: 0, stderr: 0 }, began: Date.now(), final: null };
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

  // After a reconnect: events of the gap are lost, the runs table has the truth.
  async reconnected() {
    const run = this.run;
    if (!run || !run.id || run.final) return;
    try {
      const summary = await this.app.api(`/api/runs/${encodeURIComponent(run.id)}?tail=0`);
      if (FINAL.has(summary.status)) this.finish(summary);
    } catch {
      // not recorded yet: still queued
    }
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
    const total = stdout + stderr;
    const parts = [`${number(total)} ${total === 1 ? "line" : "lines"}`];
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
