// Metrics: this edge's connections and deliveries per second, read once a second from
// GET /api/console/metrics, with a one-minute sparkline. For demos; Prometheus scrapes
// /metrics for real monitoring.

import { $, number } from "./dom.js";

const EVERY_MS = 1000;
const HISTORY = 60;

export class MetricsPanel {
  constructor(app) {
    this.app = app;
    this.canvas = $("m-spark");
    this.timer = 0;
    this.last = null;
    this.rates = [];
    window.addEventListener("resize", () => this.draw());
  }

  reset() {
    clearInterval(this.timer);
    this.timer = 0;
    this.last = null;
    this.rates = [];
    for (const id of ["m-connections", "m-rate", "m-delivered", "m-received", "m-frames", "m-bindings"]) {
      $(id).textContent = "–";
    }
    $("m-edge").textContent = "";
    this.draw();
  }

  connected() {
    if (!this.timer) this.timer = setInterval(() => this.poll(), EVERY_MS);
    this.poll();
  }

  async poll() {
    if (document.hidden) return;
    let now;
    try {
      now = await this.app.api("/api/console/metrics");
    } catch {
      return;
    }
    const last = this.last;
    if (last && last.edge === now.edge && now.ts > last.ts) {
      this.rates.push(Math.max(0, (now.events_delivered - last.events_delivered) / (now.ts - last.ts)));
      if (this.rates.length > HISTORY) this.rates.shift();
    }
    this.last = now;
    const rate = this.rates.length ? this.rates[this.rates.length - 1] : 0;
    $("m-edge").textContent = now.edge;
    $("m-connections").textContent = number(now.connections);
    $("m-rate").textContent = number(rate);
    $("m-delivered").textContent = number(now.events_delivered);
    $("m-received").textContent = number(now.events_received);
    $("m-frames").textContent = number(now.frames_accepted);
    $("m-bindings").textContent = number(now.bindings);
    this.draw();
  }

  draw() {
    const peak = Math.max(1, ...this.rates);
    $("m-spark-label").textContent = `deliveries/s, last minute · peak ${number(peak)}`;
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const context = canvas.getContext("2d");
    context.scale(ratio, ratio);
    context.clearRect(0, 0, width, height);
    if (this.rates.length < 2) return;
    const step = width / (HISTORY - 1);
    const x = (i) => (HISTORY - this.rates.length + i) * step;
    const y = (rate) => height - 1 - (rate / peak) * (height - 3);
    context.beginPath();
    context.moveTo(x(0), height);
    this.rates.forEach((rate, i) => context.lineTo(x(i), y(rate)));
    context.lineTo(x(this.rates.length - 1), height);
    context.closePath();
    context.fillStyle = "rgb(79 70 229 / 14%)";
    context.fill();
    context.beginPath();
    this.rates.forEach((rate, i) => (i ? context.lineTo(x(i), y(rate)) : context.moveTo(x(i), y(rate))));
    context.strokeStyle = "#4f46e5";
    context.lineWidth = 1.5;
    context.stroke();
  }
}
