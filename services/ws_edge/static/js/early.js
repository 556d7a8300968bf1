// Events of a request whose ack has not arrived yet: they travel another path (the
// broker) than the ack and can overtake it. Kept for a few requests, oldest dropped, and
// handled once the ack names the id.

export function keepEarly(early, id, envelope) {
  if (typeof id !== "string") return;
  if (!early.has(id)) {
    early.set(id, []);
    if (early.size > 20) early.delete(early.keys().next().value);
  }
  const events = early.get(id);
  if (events.length < 1000) events.push(envelope);
}
