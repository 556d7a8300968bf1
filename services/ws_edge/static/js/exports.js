// Excel exports (docs/exports.md): pick a report, follow its progress, download the file;
// the list of the user's exports is read again on every (re)connect, so one that
// finished while the tab was closed shows up, and the edge replays its excel.done.

import { $, bytes, clock, el, number, showError } from "./dom.js";
import { buildFields, FieldError, readFields } from "./forms.js";

export class ExportsPanel {
  constructor(app) {
    this.app = app;
    this.form = $("export-form");
    this.reportSelect = $("export-report");
    this.params = $("export-params");
    this.description = $("export-description");
    this.list = $("export-list");
    this.error = $("export-error");
    this.reports = new Map();
    this.tasks = new Map();  // task id -> {record, node}
    this.reportSelect.addEventListener("change", () => this.reportChanged());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.create();
    });
  }

  reset() {
    this.tasks.clear();
    this.renderList();
    showError(this.error, null);
  }

  setCatalog(reports) {
    this.reports = new Map(reports.map((report) => [report.name, report]));
    const chosen = this.reportSelect.value || "sample";
    this.reportSelect.replaceChildren(...reports.map((r) => el("option", { value: r.name, text: r.name })));
    if (this.reports.has(chosen)) this.reportSelect.value = chosen;
    this.reportChanged();
  }

  reportChanged() {
    const report = this.reports.get(this.reportSelect.value);
    if (!report) return;
    this.description.textContent = report.description;
    buildFields(this.params, report.params, "param");
  }

  async connected() {
    try {
      const { exports } = await this.app.api("/api/exports");
      for (const record of exports.reverse()) this.update(record.task_id, record);
    } catch (error) {
      showError(this.error, error);
    }
  }

  async create() {
    showError(this.error, null);
    let params;
    try {
      params = readFields(this.params);
    } catch (error) {
      if (!(error instanceof FieldError)) throw error;
      showError(this.error, error);
      return;
    }
    const report = this.reportSelect.value;
    try {
      const created = await this.app.api("/api/exports", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ report, params }),
      });
      this.update(created.task_id, { report, status: created.status, created_at: new Date().toISOString() });
    } catch (error) {
      showError(this.error, error);
    }
  }

  handle(envelope) {
    const data = envelope.data || {};
    if (typeof data.task_id !== "string") return;
    if (envelope.type === "excel.progress") {
      this.update(data.task_id, { status: "running", percent: data.percent, rows: data.rows, total: data.total });
    } else if (envelope.type === "excel.done") {
      this.update(data.task_id, {
        status: "done", percent: 100, rows: data.rows, filename: data.filename, size: data.size,
        download_url: data.download_url, finished_at: new Date(envelope.ts * 1000).toISOString(),
      });
    } else if (envelope.type === "excel.failed") {
      this.update(data.task_id, { status: "failed", error: { code: data.code, message: data.message } });
    }
  }

  update(taskId, changes) {
    const task = this.tasks.get(taskId) || { record: { task_id: taskId }, node: null };
    const previous = task.record.status;
    // A late progress event never takes a finished export back to "running".
    if (["done", "failed", "expired"].includes(previous) && changes.status === "running") return;
    Object.assign(task.record, changes);
    this.tasks.set(taskId, task);
    this.renderTask(task);
  }

  renderList() {
    this.list.replaceChildren();
    if (!this.tasks.size) {
      this.list.append(el("li", { class: "empty", text: "No exports yet." }));
      return;
    }
    for (const task of [...this.tasks.values()].reverse()) this.list.append(task.node);
  }

  renderTask(task) {
    const record = task.record;
    const status = record.status || "queued";
    const percent = status === "done" ? 100 : Math.round(record.percent || 0);
    const rows = status === "done" && record.rows ? ` · ${number(record.rows)} rows` : "";
    const stateText = status === "running" ? `running ${percent}%` : `${status}${rows}`;
    const created = record.created_at ? clock(Date.parse(record.created_at) / 1000) : "";
    const node = el("li", { class: `export status-${status}`, dataset: { task: record.task_id } },
      el("div", { class: "export-head" },
        el("span", { class: "report", text: record.report || "export" }),
        el("span", { class: "state", text: stateText }),
        el("time", { text: created })),
      el("progress", { max: "100", value: String(percent), "aria-label": `export ${percent}%` }));
    if (status === "done" && record.download_url) {
      const name = record.filename || `${record.task_id}.xlsx`;
      node.append(el("div", { class: "export-file" },
        el("a", { class: "download", href: record.download_url, download: name, text: name,
                  onclick: (event) => this.download(event, record, name) }),
        el("span", { class: "size", text: record.size ? bytes(record.size) : "" })));
    } else if (status === "failed" && record.error) {
      node.append(el("p", { class: "error", text: `${record.error.code}: ${record.error.message}` }));
    }
    const isNew = !task.node;
    if (task.node) task.node.replaceWith(node);
    task.node = node;
    if (isNew) this.renderList();
  }

  // The file needs the token, which a plain link cannot carry: fetch it, then save it.
  async download(event, record, name) {
    event.preventDefault();
    try {
      const response = await this.app.api(record.download_url, { raw: true });
      const url = URL.createObjectURL(await response.blob());
      const link = el("a", { href: url, download: name, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      showError(this.error, error);
    }
  }
}
