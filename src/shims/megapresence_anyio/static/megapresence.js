// megapresence.js: the browser client of a megapresence server. One ES module,
// no build step, no dependency; `megapresence serve` (and any PresenceServer,
// mounted in an ASGI app too) serves it at /megapresence.js.
//
//   import { PresenceClient } from "/megapresence.js";
//   const tab = sessionStorage.tab ||= Math.random().toString(36).slice(2, 10);
//   const client = new PresenceClient(`/ws/chat?tab=${tab}`, {  // one session per tab
//     onState: (s) => console.log(s),
//   });
//   client.subscribe("lobby", {
//     presence: "users",                  // "users", "sessions", "count" or "none"
//     onJoin: (key, member) => console.log("joined", key, member),
//     onLeave: (key, member) => console.log("left", key),
//     onUpdate: (key, member, before) => console.log("changed", key, member),
//     onSync: (members) => render(members), // after every snapshot and diff
//     onMessage: (message) => console.log(message.from, message.payload),
//     onRecover: (r) => r.recovered || reload(), // after a reconnect: missed anything?
//   });
//   client.connect();
//
// What it does (the wire protocol is megapresence_core.wire):
// - Connection: one WebSocket; `onState` hears {state: "connecting", attempt},
//   {state: "open"}, {state: "reconnecting", attempt, delay, code, reason} (delay
//   in ms) and {state: "closed", code, reason} when it gives up for good.
// - Reconnect by the close code (docs/protocol.md's table): 1000 (a normal
//   close), 1008 (kicked, refused) and 1002/1003/1007 (the client broke the
//   protocol) stop for good; 4503 (requeue: a drain, the session kept for its
//   grace) reconnects now, within `nowJitter` (0-250 ms); 1013 (too slow) backs
//   off, starting at 2-4 s, and so do the attempts after it; anything else (1001
//   going away, 1006 lost, 1011, a failed attempt) reconnects promptly: 0.5-1 s,
//   then doubling, capped at 30 s. Every delay but the "now" is "equal jitter": a
//   uniform draw in [d/2, d), from the `random` option (Math.random by default).
//   A successful open resets it.
// - `session.detached`: a newer connection (another tab, another device) took
//   this client's session. The client stops being it: `onDetached(message)`,
//   then it closes for good (1000), so two tabs never take the session from
//   each other in a loop; connect() takes it back, if the app wants that.
// - Subscriptions are the client's: after every (re)connect it sends its
//   metadata (if setMetadata set any: a restored session takes the new
//   connection's identity's), the unsubscribes the server has not confirmed (a
//   restored session keeps its channels) and each subscription's `subscribe` again, and the snapshot that answers it is compared with the map
//   it had, so a reconnect calls onJoin/onLeave/onUpdate only for what really
//   changed meanwhile (a leave seen that way waits for the next diff, which may
//   bring the member back: a snapshot lacks the changes of the current window).
// - Recovery: each subscription remembers its channel's stream position (offset
//   and epoch, from `subscribed`, `stream.reset` and each channel message) and
//   resubscribes after a reconnect with `since`; the messages it missed then
//   arrive through onMessage, in order, before any live one. Live messages that
//   come before the answer (the session rejoined its channels with the socket)
//   are held: when it recovered they come again among the missed ones, in
//   order, so each message is seen once; when it did not, they are passed on
//   as they are. The position moves only with the messages applied, so a drop in
//   the middle of a recovery asks again from the last one seen. onRecover hears
//   {recovered, reason, offset, epoch} once per resubscribe, and {recovered:
//   false, reason: "epoch", ...} on a `stream.reset`: when `recovered` is false,
//   something may be missing and the app reloads from its own store.
// - Position checks: every `positionCheck` ms (40 s) the client sends the
//   position it holds in each settled subscription (`position`); a
//   `stream.missed` (the server's stream never reached it: the client is out
//   of step) makes it resubscribe with `since`, so it recovers, or onRecover
//   hears {recovered: false} and the app reloads. A `stream.missed` whose
//   position the subscription has reached meanwhile (a `stream.reset` crossed
//   the check) is ignored.
// - A diff that does not follow the map's version, or does not fit it, puts the
//   map out of sync; the client asks for a `sync` by itself (once) and ignores
//   diffs until the fresh snapshot. PresenceMap is the same logic as the Python
//   reference model megapresence_core.wire.PresenceMap.
// - Refused for now: a `subscribe` (with `since` or not) refused with
//   `rate_limited`, `busy` or `channel_full`, or a `sync` with `rate_limited`, is
//   sent again after a backoff (the reconnect's prompt delays: 0.5-1 s, doubling per
//   refusal, capped), unless its answer came meanwhile. The command rate's
//   `rate_limited` names no command, so while any subscribe or sync is unanswered
//   it may be the one refused: each is asked again. A resubscribe's held channel messages stay held until its answer.
// - Only the server controls the client: a message that carries `from` was sent
//   by another client (the server stamps every one), whatever its type, so it
//   only ever reaches an onMessage; errors, replies and presence are taken only
//   from messages without `from`.
// - Answers the server's heartbeat (`{"type": "server.ping"}`, what an app
//   mounted behind an ASGI server that never pings sends) with `{"op": "ping"}`.
// - Leaving the page leaves: on `pagehide` the client closes (1000), so the
//   server sees the session leave after its grace even if the browser keeps the
//   page in its back/forward cache; on a `pageshow` of that cached page it
//   connects again (and resubscribes) as it would after any close.

const STOP = new Set([1000, 1002, 1003, 1007, 1008]);
const NOW = new Set([4503]);
const BACK_OFF = new Set([1013]);
// The errors that refuse a `subscribe` (docs/protocol.md): an error names its
// command's channel, not its command, so another code (a publish's `not_subscribed`)
// that arrives while the channel's subscribe is unanswered is not that subscribe's.
const SUBSCRIBE_REFUSALS = new Set([
  "forbidden", "too_many_channels", "over_limit", "not_joined", "bad_command",
]);
// The errors that refuse a `subscribe` for now: it is sent again after a backoff (a full
// channel has room again once a member leaves).
const SUBSCRIBE_RETRIES = new Set(["rate_limited", "busy", "channel_full"]);
const PRESENCE_TYPES = new Set([
  "presence.state", "presence.diff", "presence.count", "subscribed", "unsubscribed",
  "stream.reset", "stream.missed",
]);

/** What a close with `code` means for the client: "stop", "now", "back-off" or "prompt". */
export function reconnectPlan(code) {
  if (STOP.has(code)) return "stop";
  if (NOW.has(code)) return "now";
  if (BACK_OFF.has(code)) return "back-off";
  return "prompt";
}

/** Whether two JSON values are equal (objects compared by keys, in any order). */
export function sameJson(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => sameJson(x, b[i]));
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length &&
    keys.every((k) => Object.hasOwn(b, k) && sameJson(a[k], b[k]));
}

/**
 * One channel's members in one view ("users" or "sessions"), built only from the
 * channel's presence.state and presence.diff messages. `apply` returns false when
 * a diff does not follow (its version is not the next one) or does not fit (a
 * leave of a member that differs, an update of an absent one, a join of a present
 * one): the map is then out of sync until the next snapshot.
 */
export class PresenceMap {
  constructor(channel, view) {
    this.channel = channel;
    this.view = view;
    this.members = new Map();
    this.version = null;
    this.inSync = false;
  }

  apply(message) {
    if (message.channel !== this.channel || message.view !== this.view) {
      throw new Error(`a ${message.view} message of ${message.channel} is not for this map`);
    }
    if (message.type === "presence.state") {
      this.members = new Map(Object.entries(message.members));
      this.version = message.version;
      this.inSync = true;
      return true;
    }
    const members = this.members;
    const fits = this.inSync &&
      message.version === (this.version ?? 0) + 1 &&
      Object.entries(message.leaves).every(
        ([key, value]) => members.has(key) && sameJson(members.get(key), value)) &&
      Object.keys(message.updates).every((key) => members.has(key)) &&
      !Object.keys(message.joins).some((key) => members.has(key));
    if (!fits) {
      this.inSync = false;
      return false;
    }
    for (const key of Object.keys(message.leaves)) members.delete(key);
    for (const [key, value] of Object.entries(message.updates)) members.set(key, value);
    for (const [key, value] of Object.entries(message.joins)) members.set(key, value);
    this.version = message.version;
    return true;
  }
}

/** Sessions and distinct users of a map's members, in either view. */
function countOf(view, members) {
  if (view === "users") {
    let sessions = 0;
    for (const member of members.values()) sessions += member.sessions.length;
    return { sessions, users: members.size };
  }
  return { sessions: members.size, users: new Set([...members.values()].map((m) => m.userId)).size };
}

/** Call `handler(...args)` if given; a throwing handler is reported, never fatal. */
function call(handler, ...args) {
  if (typeof handler !== "function") return;
  try {
    handler(...args);
  } catch (error) {
    console.error("megapresence: a callback threw", error);
  }
}

/** One channel the client is subscribed to, with its members (or counts) as received. */
export class Subscription {
  constructor(client, channel, options) {
    this.client = client;
    this.channel = channel;
    this.presence = options.presence ?? "users";
    this.handlers = options;
    /** "pending" (sent, unanswered), "subscribed", "refused" or "unsubscribed". */
    this.state = "pending";
    this.map = this._newMap();
    this.count = null;
    this._syncAsked = this.map !== null; // the subscribe brings a snapshot
    this._syncSent = false; // a `sync` command is out, its snapshot not yet here
    this._refusals = 0; // refusals for now (`rate_limited`, ...) since it went out
    this._retryTimer = null;
    this._held = null;
    this._heldTimer = null;
    /** The channel's stream position this subscription holds: {offset, epoch}, or null. */
    this.position = null;
    /** After a resubscribe: whether what was missed came back (null before any). */
    this.recovered = null;
    this._recovering = null; // channel messages held while a `since` is unanswered
  }

  /** The members by key (user id or session id); empty in modes "count" and "none". */
  get members() { return this.map ? this.map.members : new Map(); }

  /** {sessions, users}: from the counts received, or counted from the map. */
  get counts() { return this.map ? countOf(this.map.view, this.map.members) : this.count; }

  unsubscribe() { this.client.unsubscribe(this.channel); }

  _newMap() {
    return this.presence === "users" || this.presence === "sessions"
      ? new PresenceMap(this.channel, this.presence) : null;
  }

  _command() {
    const command = { op: "subscribe", channel: this.channel, presence: this.presence };
    if (this.position) {
      command.since = this.position;
      this._recovering ??= []; // a retry keeps what the refused one held
    }
    return command;
  }

  // Where the stream is, and (after a `since`, or a reset) whether nothing was lost.
  _position(message) {
    if (typeof message.offset !== "number" || typeof message.epoch !== "string") return;
    this.position = { offset: message.offset, epoch: message.epoch };
  }

  _recover(message, recovered, reason) {
    this.recovered = recovered;
    const result = { recovered, reason, offset: message.offset, epoch: message.epoch };
    call(this.handlers.onRecover, result, this);
  }

  _subscribed(message) {
    const held = this._recovering ?? [];
    this._recovering = null;
    if (message.recovered === true) { // the held ones come again, among the missed ones
      this._recover(message, true, null);
      return;
    }
    for (const live of held) this._channelMessage(live);
    this._position(message);
    if (message.recovered === false) this._recover(message, false, message.reason ?? null);
  }

  _channelMessage(message) {
    const at = this.position;
    // One applied already (a refusal crossed a recovery's answer): never twice.
    if (at && message.epoch === at.epoch && message.offset <= at.offset) return;
    this._position(message);
    call(this.handlers.onMessage, message, this);
  }

  // The server's stream never reached this position: ask again from it, unless a
  // subscribe is unanswered (its answer brings the position) or a reset (or a
  // recovery) crossed the check and the position is now the stream's.
  _missed(message) {
    const at = this.position;
    if (this.state !== "subscribed" || this._recovering) return;
    if (at && at.epoch === message.epoch && at.offset >= message.offset) return;
    if (this.map) this._syncAsked = true; // the subscribe brings a snapshot
    this.state = "pending";
    this.client.send(this._command());
  }

  _disconnected() {
    this._recovering = null; // unanswered: the next subscribe asks from the same place
    this._syncAsked = false;
    this._syncSent = false;
    this._stopRetry(); // the resubscribe brings a snapshot
    if (this.map) this.map.inSync = false;
    this._releaseHeld();
  }

  _receive(message) {
    const h = this.handlers;
    if (Object.hasOwn(message, "from")) { // another client's message, whatever its type:
      this._data(message); // data with a stream position, never control
      return;
    }
    switch (message.type) {
      case "subscribed":
        this.state = "subscribed";
        this._answered();
        this._subscribed(message);
        return;
      case "stream.reset":
        this._position(message);
        this._recover(message, false, "epoch");
        return;
      case "stream.missed":
        this._missed(message);
        return;
      case "unsubscribed":
        this.state = "unsubscribed";
        return;
      case "presence.count":
        if (this.presence !== "count") return;
        this.count = { sessions: message.sessions, users: message.users };
        call(h.onCount, this.count, this);
        return;
      case "presence.state":
      case "presence.diff":
        this._presence(message);
        return;
      default:
        this._data(message);
    }
  }

  // A channel message: held while a recovery is unanswered, else applied.
  _data(message) {
    if (this._recovering) this._recovering.push(message);
    else this._channelMessage(message);
  }

  _presence(message) {
    const map = this.map;
    if (!map || message.view !== map.view) return; // from a mode this subscription left
    const h = this.handlers;
    const before = map.members;
    const previous = message.type === "presence.diff"
      ? Object.keys(message.updates).map((key) => before.get(key)) : [];
    if (!map.apply(message)) {
      this._askSync();
      return;
    }
    if (message.type === "presence.state") {
      this._syncAsked = false;
      this._syncAnswered();
      this._releaseHeld();
      const after = map.members;
      const gone = new Map([...before].filter(([key]) => !after.has(key)));
      for (const [key, member] of after) {
        if (!before.has(key)) call(h.onJoin, key, member, this);
        else if (!sameJson(before.get(key), member)) {
          call(h.onUpdate, key, member, before.get(key), this);
        }
      }
      this._hold(gone);
    } else {
      const held = this._held ?? new Map();
      this._held = null;
      clearTimeout(this._heldTimer);
      for (const [key, member] of Object.entries(message.leaves)) call(h.onLeave, key, member, this);
      Object.entries(message.updates).forEach(([key, member], i) => {
        call(h.onUpdate, key, member, previous[i], this);
      });
      for (const [key, member] of Object.entries(message.joins)) {
        if (!held.has(key)) call(h.onJoin, key, member, this);
        else if (!sameJson(held.get(key), member)) call(h.onUpdate, key, member, held.get(key), this);
        held.delete(key);
      }
      this._held = held;
      this._releaseHeld();
    }
    call(h.onSync, map.members, this);
  }

  // A snapshot taken in the middle of a window lacks the window's changes (the
  // diff that follows brings them), so a member it lacks, that the map had, may
  // be one who just came back: its leave waits for that diff (or a second), and
  // a member the diff brings back is no leave and join. Without this, a session
  // resubscribing right after it (re)joined would see itself leave and join.
  _hold(gone) {
    if (gone.size === 0) return;
    this._held = gone;
    this._heldTimer = setTimeout(() => this._releaseHeld(), this.client.leaveHold);
  }

  _releaseHeld() {
    const held = this._held;
    this._held = null;
    clearTimeout(this._heldTimer);
    if (!held) return;
    for (const [key, member] of held) {
      if (!this.map.members.has(key)) call(this.handlers.onLeave, key, member, this);
    }
  }

  /** Replaced or unsubscribed: its held leaves are nobody's business any more. */
  _drop() {
    this.state = "unsubscribed";
    this._held = null;
    clearTimeout(this._heldTimer);
    this._stopRetry();
  }

  _askSync() {
    if (this._syncAsked) return;
    this._syncAsked = true;
    this._sendSync();
  }

  _sendSync() {
    this._syncSent = true;
    this.client.send({ op: "sync", channel: this.channel });
  }

  _syncAnswered() {
    this._syncSent = false;
    this._answered();
  }

  /** Whether its `subscribe` or its `sync` waits for an answer. */
  get _unanswered() { return this.state === "pending" || this._syncSent; }

  // An answer came: no retry is due unless a command of it is still unanswered.
  _answered() {
    if (!this._unanswered) this._stopRetry();
  }

  _stopRetry() {
    this._refusals = 0;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  // Its subscribe (`rate_limited`, `busy`, `channel_full`) or sync (`rate_limited`) was
  // refused for now: asked again after a backoff, unless the answer has come by then.
  _retryLater() {
    if (this._retryTimer !== null) return;
    this._refusals += 1;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (this.state === "pending") this.client.send(this._command());
      else if (this._syncSent) this._sendSync();
    }, this.client.delayFor(this._refusals, false));
  }
}

/**
 * A connection to a megapresence server that keeps itself up, and the channels it
 * watches. `url` is a ws:// or wss:// URL, or a path on this page's origin, or a
 * function giving one, called before each attempt (to send the session id the
 * server gave, say, so a reconnect within the leave grace keeps the session).
 *
 * Options: onState(state), onMessage(message) (every message that is not a
 * subscription's: welcome, broadcasts, direct messages; one with `from` is
 * another client's), onError(payload) (an error the server sent),
 * onDetached(message) (a newer connection took this session; the client has
 * closed for good), random (a function giving [0, 1), for the jitter), baseDelay
 * (ms, 1000), backOffFactor (4), maxDelay (ms, 30000), nowJitter (ms, 250: the
 * most a reconnect "now", after 4503, waits), leaveHold (ms, 1000: how
 * long a leave seen only by comparing snapshots waits for the diff that may bring
 * the member back), positionCheck (ms, 40000: how often the position held in each
 * channel is checked with the server; 0: never), WebSocket (the constructor to use).
 */
export class PresenceClient {
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.random = options.random ?? Math.random;
    this.baseDelay = options.baseDelay ?? 1000;
    this.backOffFactor = options.backOffFactor ?? 4;
    this.maxDelay = options.maxDelay ?? 30000;
    this.nowJitter = options.nowJitter ?? 250;
    this.leaveHold = options.leaveHold ?? 1000;
    this.positionCheck = options.positionCheck ?? 40000;
    this._checkTimer = null;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** "idle", "connecting", "open", "reconnecting" or "closed". */
    this.state = "idle";
    /** Reconnect attempts since the last open. */
    this.attempt = 0;
    this.subscriptions = new Map();
    this.socket = null;
    this._backingOff = false;
    this._timer = null;
    this._directs = [];
    this._metadata = undefined; // set by setMetadata: sent again after every reconnect
    this._left = new Set(); // unsubscribed channels the server has not confirmed
    // The browser says the network is back: no reason to wait out the delay.
    this._online = () => {
      if (this.state === "reconnecting" && !this._backingOff) this.connect();
    };
    // The page goes away (or into the back/forward cache): so does the session,
    // after the server's grace; a cached page shown again connects again.
    this._hidden = false;
    this._pagehide = () => {
      if (this.state === "idle" || this.state === "closed") return;
      this._shut("page hidden");
      this._hidden = true;
    };
    this._pageshow = (event) => {
      if (!event.persisted || !this._hidden) return;
      this._hidden = false;
      this.connect();
    };
  }

  /** Open the connection (again, after a close for good). */
  connect() {
    if (this.state === "connecting" || this.state === "open") return this;
    clearTimeout(this._timer);
    this._timer = null;
    this._hidden = false;
    globalThis.addEventListener?.("online", this._online);
    globalThis.addEventListener?.("pagehide", this._pagehide);
    globalThis.addEventListener?.("pageshow", this._pageshow);
    this._setState({ state: "connecting", attempt: this.attempt });
    let socket;
    try {
      socket = new this.WebSocket(this._resolvedUrl());
    } catch (error) { // a malformed URL: nothing to retry
      this._giveUp(1002, String(error));
      return this;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (socket !== this.socket) return;
      this.attempt = 0;
      this._backingOff = false;
      this._setState({ state: "open" });
      if (this._metadata !== undefined) this.send({ op: "metadata", metadata: this._metadata });
      for (const channel of this._left) this.send({ op: "unsubscribe", channel });
      for (const subscription of this.subscriptions.values()) {
        subscription.state = "pending"; // it may be refused this time (forbidden, say)
        subscription._syncAsked = subscription.map !== null; // the subscribe brings a snapshot
        this.send(subscription._command());
      }
      if (this.positionCheck > 0) {
        this._checkTimer = setInterval(() => this._checkPositions(), this.positionCheck);
      }
    };
    socket.onmessage = (event) => {
      if (socket === this.socket) this._receive(event.data);
    };
    socket.onclose = (event) => {
      if (socket === this.socket) this._closed(event.code, event.reason);
    };
    return this;
  }

  /** Close for good (code 1000); connect() starts again. */
  close(reason = "closed by the client") {
    this._hidden = false;
    globalThis.removeEventListener?.("pagehide", this._pagehide);
    globalThis.removeEventListener?.("pageshow", this._pageshow);
    this._shut(reason);
  }

  _shut(reason) {
    const socket = this.socket;
    this.socket = null;
    clearTimeout(this._timer);
    this._timer = null;
    if (socket && socket.readyState <= 1) socket.close(1000, reason);
    this._disconnected();
    this._giveUp(1000, reason);
  }

  /** Send one command object; false when not connected (it is not queued). */
  send(command) {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1) return false;
    socket.send(JSON.stringify(command));
    return true;
  }

  /**
   * Subscribe to `channel` (again, with another mode: the mode changes). Options:
   * presence ("users", the default, "sessions", "count" or "none"), onJoin(key,
   * member, sub), onLeave(key, member, sub), onUpdate(key, member, before, sub),
   * onSync(members, sub), onCount({sessions, users}, sub), onMessage(message,
   * sub), onError(payload, sub). Kept across reconnects until unsubscribe().
   */
  subscribe(channel, options = {}) {
    this.subscriptions.get(channel)?._drop();
    const subscription = new Subscription(this, channel, options);
    this.subscriptions.set(channel, subscription);
    this._left.delete(channel);
    this.send(subscription._command());
    return subscription;
  }

  /** Leave `channel`: its members stop being watched and this session leaves it. */
  unsubscribe(channel) {
    const subscription = this.subscriptions.get(channel);
    if (subscription) subscription._drop();
    this.subscriptions.delete(channel);
    this._left.add(channel); // until the server confirms: sent again after a reconnect
    this.send({ op: "unsubscribe", channel });
  }

  /** A message to the channel's subscribers, stamped by the server with this session. */
  publish(channel, type, payload, { excludeSelf = false } = {}) {
    const command = { op: "publish", channel, type, excludeSelf };
    if (payload !== undefined) command.payload = payload;
    return this.send(command);
  }

  /** A message to every session of `userId`; resolves to whether the server found one. */
  direct(userId, type, payload) {
    const command = { op: "direct", userId, type };
    if (payload !== undefined) command.payload = payload;
    if (!this.send(command)) return Promise.reject(new Error("not connected"));
    return new Promise((resolve, reject) => this._directs.push({ userId, resolve, reject }));
  }

  /** Replace this session's metadata (now, and after every reconnect); watchers see an update. */
  setMetadata(metadata) {
    this._metadata = metadata;
    return this.send({ op: "metadata", metadata });
  }

  /** The delay (ms) before reconnect attempt `attempt` (from 1), with jitter. */
  delayFor(attempt, backingOff) {
    const step = Math.min(
      this.maxDelay,
      this.baseDelay * 2 ** (attempt - 1) * (backingOff ? this.backOffFactor : 1),
    );
    return step / 2 + this.random() * (step / 2);
  }

  _resolvedUrl() {
    const wanted = typeof this.url === "function" ? this.url(this) : this.url;
    const url = new URL(wanted, globalThis.location ? globalThis.location.href : undefined);
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    return url.href;
  }

  _setState(state) {
    this.state = state.state;
    call(this.options.onState, state, this);
  }

  _receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // not JSON: not from this protocol
    }
    if (message === null || typeof message !== "object" || Array.isArray(message)) return;
    if (Object.hasOwn(message, "from")) { // another client's: data, never control
      const subscription = typeof message.channel === "string"
        ? this.subscriptions.get(message.channel) : undefined;
      if (subscription) subscription._receive(message);
      else call(this.options.onMessage, message, this);
      return;
    }
    if (message.type === "error") {
      const payload = message.payload ?? {};
      const subscription = payload.channel && this.subscriptions.get(payload.channel);
      if (payload.code === "rate_limited" && !payload.channel) { // the command rate's
        for (const each of this.subscriptions.values()) if (each._unanswered) each._retryLater();
      } else if (subscription && subscription.state === "pending") {
        if (SUBSCRIBE_REFUSALS.has(payload.code)) {
          subscription.state = "refused";
          this.subscriptions.delete(payload.channel);
          subscription._stopRetry();
        } else if (SUBSCRIBE_RETRIES.has(payload.code)) subscription._retryLater();
      }
      if (subscription) call(subscription.handlers.onError, payload, subscription);
      call(this.options.onError, payload, this);
      return;
    }
    if (message.type === "server.ping") { // the server's heartbeat: say something
      this.send({ op: "ping" });
      return;
    }
    if (message.type === "session.detached") {
      call(this.options.onDetached, message, this);
      this.close("session taken over by a newer connection");
      return;
    }
    if (message.type === "direct.result") {
      const index = this._directs.findIndex((d) => d.userId === message.userId);
      if (index >= 0) this._directs.splice(index, 1)[0].resolve(Boolean(message.found));
      return;
    }
    if (message.type === "unsubscribed") this._left.delete(message.channel);
    const subscription = typeof message.channel === "string"
      ? this.subscriptions.get(message.channel) : undefined;
    if (subscription) {
      if (message.type === "unsubscribed") this.subscriptions.delete(message.channel);
      subscription._receive(message);
    } else if (!PRESENCE_TYPES.has(message.type)) {
      call(this.options.onMessage, message, this);
    }
  }

  // Each settled subscription's position, for the server to compare with its stream.
  _checkPositions() {
    for (const sub of this.subscriptions.values()) {
      if (sub.state !== "subscribed" || !sub.position || sub._recovering) continue;
      this.send({ op: "position", channel: sub.channel, ...sub.position });
    }
  }

  _disconnected() {
    clearInterval(this._checkTimer);
    this._checkTimer = null;
    for (const subscription of this.subscriptions.values()) subscription._disconnected();
    for (const pending of this._directs.splice(0)) pending.reject(new Error("connection closed"));
  }

  _closed(code, reason) {
    this.socket = null;
    this._disconnected();
    const plan = reconnectPlan(code);
    if (plan === "stop") {
      this._giveUp(code, reason);
      return;
    }
    this._backingOff = this._backingOff || plan === "back-off";
    this.attempt += 1;
    const delay = plan === "now" && this.attempt === 1
      ? this.random() * this.nowJitter : this.delayFor(this.attempt, this._backingOff);
    this._setState({ state: "reconnecting", attempt: this.attempt, delay, code, reason });
    this._timer = setTimeout(() => {
      this._timer = null;
      this.connect();
    }, delay);
  }

  _giveUp(code, reason) {
    globalThis.removeEventListener?.("online", this._online);
    this.attempt = 0;
    this._backingOff = false;
    this._setState({ state: "closed", code, reason });
  }
}
