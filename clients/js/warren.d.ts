// Types of Warren's JavaScript client (warren.js); the wire format is docs/protocol.md.

/** An address: `user:<id>`, `group:<name>`, `broadcast` (destinations), `service:<name>` (senders only). */
export type Address = `user:${string}` | `group:${string}` | "broadcast" | `service:${string}`;
export type Destination = `user:${string}` | `group:${string}` | "broadcast";

/** An event as the edge forwards it (protocol.md section 2). */
export interface Envelope<Type extends string = string, Data extends object = Record<string, unknown>> {
  v: 1;
  id: string;
  type: Type;
  /** Unix time in seconds of the publish. */
  ts: number;
  to: Destination;
  from: Address;
  data: Data;
}

export interface ChatToken { ask_id: string; seq: number; text: string }
export interface ChatReply { ask_id: string; text: string }
export interface ChatError {
  ask_id: string;
  code: "bad_request" | "cat_unavailable" | "cat_timeout" | "cat_error" | "cat_no_llm" | "interrupted" | (string & {});
  message: string;
}
export type RunArgs = Record<string, unknown>;
export interface RunQueued { run_id: string; job: string; args: RunArgs }
export interface RunStarted extends RunQueued { replica: string }
export interface RunOutput { run_id: string; seq: number; stream: "stdout" | "stderr"; lines: string[] }
export interface RunFinished {
  run_id: string;
  status: "completed" | "stopped" | "failed" | "timeout";
  /** Negative for a signal; null when the runner, not the job, ended the run. */
  exit_code: number | null;
  duration_s: number;
  lines: number;
  reason: string | null;
}
export interface RunError { command: string; command_id: string; run_id: string | null; code: string; message: string }
export interface ExcelProgress { task_id: string; rows: number; total: number | null; percent: number | null }
export interface ExcelDone { task_id: string; filename: string; size: number; rows: number; download_url: string }
export interface ExcelFailed { task_id: string; code: string; message: string }

/** The data of Warren's own event types (protocol.md section 14 and the services' documents). */
export interface EventData {
  message: Record<string, unknown>;
  "chat.token": ChatToken;
  "chat.reply": ChatReply;
  "chat.error": ChatError;
  "run.queued": RunQueued;
  "run.started": RunStarted;
  "run.output": RunOutput;
  "run.finished": RunFinished;
  "run.error": RunError;
  "excel.progress": ExcelProgress;
  "excel.done": ExcelDone;
  "excel.failed": ExcelFailed;
}

/** The event a listener for `Type` receives; any other type's data is an open object. */
export type EventOf<Type extends string> = Type extends keyof EventData
  ? Envelope<Type, EventData[Type]>
  : Envelope<Type>;

/** The data of Warren's own command types. */
export interface CommandData {
  "chat.ask": { text: string };
  "run.start": { job: string; args?: RunArgs };
  "run.stop": { run_id: string };
  "excel.create": { report: string; params?: Record<string, unknown> };
}

/** An ack's data: `id` is the published envelope's id (a command's ask/run/task id). */
export interface Ack {
  id: string;
  [field: string]: unknown;
}

/** "recovering": welcomed, and the edge is replaying what the client missed (protocol.md 17.3). */
export type State = "connecting" | "recovering" | "open" | "reconnecting" | "closed" | "unauthorized" | "failed";

export interface StateChange {
  state: State;
  previous: State;
  /** Why, in words: the close reason, the HTTP refusal, or the client's own decision. */
  reason?: string;
  /** The close code that caused it (1006: the connection dropped). */
  code?: number;
  /** The HTTP status and error code of a refused upgrade (visible in Node with ws only). */
  status?: number;
  error?: string | null;
  retryAfterMs?: number | null;
  /** "reconnecting": the wait before the next attempt, and the failed attempts in a row
   *  since the last welcome (after a drain, 1001, which is no failure: the number of the
   *  attempt about to be made). */
  delayMs?: number;
  attempt?: number;
  /** "recovering", "open": the edge's instance id. */
  edge?: string;
  /** "recovering", "open": what the welcome said of the position sent (see Recovery). */
  recovered?: boolean | null;
  /** "recovering": the position the client reconnected with. */
  since?: number;
  /** "open" after "recovering": the events the edge replayed (replay.done). */
  replayed?: number | null;
}

/**
 * What the last welcome said of the position the client sent (protocol.md 17.3), or, with
 * `inBand`, what the edge said after replaying on the open socket what was routed while
 * its broker connection was away (17.5). When `recovered` is false, events were missed:
 * read recorded state again (the HTTP API).
 */
export interface Recovery {
  /** true: the edge replays (in band: replayed) everything since `since`; false: it cannot; null: no position was sent. */
  recovered: boolean | null;
  /** Why not: "too_old", "invalid_position", "history_off", or the client's "unsupported" (an edge without recovery). */
  reason: "too_old" | "invalid_position" | "history_off" | "unsupported" | (string & {}) | null;
  /** With "too_old": the position of the oldest event the edge still holds. */
  oldest: number | null;
  /** The position sent, or null; in band, the position the edge replayed from (before its window). */
  since: number | null;
  /** The events replayed, once replay.done arrived; null before, and without a replay. */
  replayed: number | null;
  /** false: the answer of a welcome, heard before its replay; true: of a replay.done on the open socket, after it. */
  inBand: boolean;
}

/** The ack of a history request (protocol.md 17.4). */
export interface History {
  key: Destination;
  /** Oldest first. */
  events: Envelope[];
  /** The position of the oldest event the edge holds (null: none); later than `since`: older events are gone. */
  oldest: number | null;
}

export interface HistoryOptions {
  /** 1 to 1000; the edge's default is 100. The newest `limit` events are returned. */
  limit?: number;
  /** Only events whose ts is at least this position. */
  since?: number | null;
}

/** The welcome's data, with the `exp` of the connection's token (null if unknown). */
export interface Identity {
  user: string;
  groups: string[];
  roles: string[];
  edge: string;
  exp: number | null;
}

/**
 * Every failure the client reports: `send()`/`command()` rejections carry the edge's code
 * (protocol.md 6.6) or one of the client's own, and onError() receives the rest.
 */
export class WarrenError extends Error {
  constructor(code: string, message: string, details?: Record<string, unknown>);
  code: ErrorCode;
  /** For "disconnected": the close code of the socket that dropped. */
  closeCode?: number;
}

export type ErrorCode =
  // the client's own, on send()/command()
  | "not_connected" | "disconnected" | "timeout" | "frame_too_big" | "invalid_frame"
  // reported on onError()
  | "binary_frame" | "invalid_json" | "unknown_frame" | "invalid_envelope" | "unmatched_reply"
  | "listener_failed" | "refresh_failed" | "refresh_unsupported"
  // ready() rejections
  | "closed" | "unauthorized" | "failed"
  // the edge's (protocol.md 6.6), and any a newer edge adds
  | "unknown_type" | "invalid_address" | "forbidden" | "no_service" | "unavailable" | "rate_limited"
  | "database_unavailable" | "internal" | "token_invalid" | "token_expired" | "unknown_user"
  | (string & {});

export interface TokenRequest {
  /** "connect": the first; "expired": the edge closed with 4001, or the token's exp passed;
   * "rejected": the edge refused it (HTTP 401); "refresh": ahead of exp, for auth.refresh. */
  reason: "connect" | "expired" | "rejected" | "refresh";
}

export interface Backoff {
  /** First retry's ceiling; doubles each attempt. Default 500. */
  baseMs?: number;
  /** Ceiling of every wait. Default 30000. */
  capMs?: number;
  /** The base after 1013 or HTTP 503, instead of baseMs. Default 5000. */
  overloadedBaseMs?: number;
  /** Least wait after 1013 or a 503 without Retry-After. Default 1000. */
  retryAfterMs?: number;
}

/** The constructor of a standard WebSocket: the browser's, Node 22's, or the ws package's. */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[]): WebSocketLike;
}
export interface WebSocketLike {
  readonly protocol: string;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface WarrenOptions {
  /** A token for the next connection or refresh; called again when the edge refuses one. */
  getToken: (request: TokenRequest) => string | Promise<string>;
  /** Default: globalThis.WebSocket (browsers, Node 22+). Node 20: ws's WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** "subprotocol" (default): the token in Sec-WebSocket-Protocol; "query": ?token= for old edges. */
  auth?: "subprotocol" | "query";
  backoff?: Backoff;
  /** Consecutive failed attempts before the client stops as "failed". Default Infinity. */
  maxAttempts?: number;
  /** Time from opening a socket to its welcome. Default 20000. */
  connectTimeoutMs?: number;
  /** Time for an ack or error to arrive. Default 15000. */
  requestTimeoutMs?: number;
  /** Larger frames are refused by the client (the edge's WARREN_EDGE_MAX_FRAME_BYTES). Default 65536. */
  maxFrameBytes?: number;
  /**
   * Where to recover from (protocol.md 17.2): a position saved from `position` earlier,
   * e.g. before a page reload. Default null: no recovery on the first connection.
   */
  position?: number | null;
  /** Position listeners hear of a new position at most this often (the edge's own at once). Default 200. */
  positionIntervalMs?: number;
  /** The newest envelope ids always remembered for de-duplication. Default 2048. */
  dedupSize?: number;
  /** The most ids remembered: ids the replay window still covers, beyond dedupSize, up to this. Default 100000. */
  dedupLimit?: number;
  /** Refresh the token in band before its exp. Default true. */
  refresh?: boolean;
  /** A source of numbers in [0, 1) for the jitter. Default Math.random. */
  random?: () => number;
}

export type Listener<T> = (value: T) => void;
export type Unsubscribe = () => void;

export class Warren {
  /** Starts connecting at once; `url` may be a function, asked before each attempt. */
  constructor(url: string | (() => string | Promise<string>), options: WarrenOptions);

  readonly state: State;
  /** The welcome of the open connection, updated by each refresh; null before the first. */
  readonly identity: Identity | null;
  /** The id of the last event delivered. */
  readonly lastEventId: string | null;
  /**
   * Every event addressed to this client routed before this time (Unix seconds) was
   * received: the ts of the last event, or the position the edge gave in welcome or
   * replay.done. The client reconnects with it (`?since=`); save it to recover after a
   * reload. null until the first welcome, unless given in the options.
   */
  readonly position: number | null;
  /** What the last welcome, or in-band replay.done, said of what was missed; null before the first welcome. */
  readonly recovery: Recovery | null;
  /** The last event id delivered per destination (`to`). */
  readonly lastEventIds: Map<string, string>;
  /** `replayed`: events delivered while "recovering". */
  readonly stats: { events: number; duplicates: number; garbage: number; reconnects: number; replayed: number };

  /** Events of one type, or of every type with "*". */
  on<Type extends string>(type: Type, listener: Listener<Type extends "*" ? Envelope : EventOf<Type>>): Unsubscribe;
  off<Type extends string>(type: Type, listener: Listener<Type extends "*" ? Envelope : EventOf<Type>>): void;
  onState(listener: Listener<StateChange>): Unsubscribe;
  onError(listener: Listener<WarrenError>): Unsubscribe;
  onWelcome(listener: Listener<Identity>): Unsubscribe;
  onRefresh(listener: Listener<Identity>): Unsubscribe;
  /**
   * After each welcome, before its replay, and after each in-band replay (the edge's broker
   * connection came back, `inBand` true): whether the client recovered what it missed.
   */
  onRecovery(listener: Listener<Recovery>): Unsubscribe;
  /** The position, at most every positionIntervalMs, at once when the edge sets it and when the client stops. */
  onPosition(listener: Listener<number | null>): Unsubscribe;

  /** Resolves once open (after a replay: once it is done); rejects on "closed", "unauthorized" or "failed". */
  ready(): Promise<Identity>;

  /** A client frame; resolves with the ack's data, rejects with a WarrenError. */
  send(type: "message.send", frame: { to: Destination; data?: Record<string, unknown> }): Promise<Ack>;
  /** Other frame types, such as those a newer edge adds. */
  send<Type extends string>(
    type: Type extends "message.send" ? never : Type, frame?: { to?: string; data?: Record<string, unknown> },
  ): Promise<Ack>;
  command<Type extends keyof CommandData>(type: Type, data: CommandData[Type]): Promise<Ack>;
  /** Commands of other services (their own documents give the data). */
  command<Type extends string>(type: Type extends keyof CommandData ? never : Type, data?: Record<string, unknown>): Promise<Ack>;
  /** The recent events of one of the token's keys; rejects with the edge's code (`forbidden` for another key). */
  history(key: Destination, options?: HistoryOptions): Promise<History>;

  /** Connect again after close() or a stop ("unauthorized", "failed"). */
  connect(): void;
  /** Close with 1000 and stay closed; pending requests reject with "disconnected". */
  close(reason?: string): void;
}

export const SUBPROTOCOL: "warren.v1";
export const AUTH_SUBPROTOCOL_PREFIX: "warren.auth.";
export const DEFAULTS: Readonly<Required<Omit<WarrenOptions, "getToken" | "WebSocket" | "random" | "position">>>;
export type CloseAction = "now" | "backoff" | "overloaded" | "token" | "stop";
export function closeAction(code: number, byClient?: boolean): CloseAction;
export function refusalAction(status: number): CloseAction;
export function backoffDelay(n: number, baseMs: number, capMs: number, random?: () => number): number;
export function refreshDelay(remainingMs: number): number;
export function tokenClaims(token: unknown): Record<string, unknown> | null;
