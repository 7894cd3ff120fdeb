/**
 * Types for aether.js, the browser client of the aether-actix relay.
 *
 *   import Aether from 'aether-actix-client';        // ESM (types: aether.d.mts)
 *   import Aether = require('aether-actix-client');  // CommonJS
 *   <script src="/aether.js"> + `Aether` global       // scripts (UMD global)
 *
 * Reference: README.md beside this file.
 */

export = Aether;
export as namespace Aether;

declare class Aether {
  /**
   * Opens a client on the relay's WebSocket URL (e.g. `ws://127.0.0.1:8211/ws`). Hydrates from the
   * localStorage cache synchronously, then connects (protocol v2, v1 against an upstream server).
   */
  constructor(url: string, opts?: Aether.Options);

  /** The URL as given. */
  readonly url: string;

  /**
   * Sets `key` to `value`, at once locally and then on the relay. `undefined` deletes the key;
   * `null` is an ordinary value. Returns a handle whose `durable` promise settles on the relay's
   * acknowledgement (v2) or echo (v1).
   */
  set<T = Aether.Value>(key: string, value: T | undefined): Aether.Write<T>;
  /** Deletes `key`. */
  delete(key: string): Aether.Write<never>;
  /** The current value (pending local writes included), or `undefined` when absent. */
  get<T = Aether.Value>(key: string): T | undefined;
  /** True when the key exists (also when its value is `null`). */
  has(key: string): boolean;
  keys(): string[];
  /** A plain-object copy of the whole state. */
  snapshot(): Record<string, Aether.Value>;

  /** Resolves when every pending write (to `key`, or to any key) is durable; rejects if one fails. */
  whenDurable(key?: string): Promise<void>;
  /** Writes (to `key`, or in total) waiting for the relay's acknowledgement. */
  pendingWrites(key?: string): number;

  /** `cb(newValue, oldValue)` whenever the key's value changes; `undefined` means absent. */
  on<T = Aether.Value>(key: string, cb: Aether.KeyWatcher<T>): Aether.Unsubscribe;
  onAny(cb: Aether.AnyWatcher): Aether.Unsubscribe;
  /** Called at once with the current state, then after every `hello` (true) and every close (false). */
  onStatus(cb: Aether.StatusWatcher): Aether.Unsubscribe;
  /** One of this client's acknowledged writes lost to a later write from someone else (v2 only). */
  onSupersede(cb: Aether.SupersedeWatcher): Aether.Unsubscribe;
  /**
   * Auth failures and refusals (fatal: no reconnect): 'auth' (4401), 'forbidden' (4403), 'room'
   * (4400 bad room, or a relay without rooms); rate-limit and oversize closes; full storage.
   */
  onError(cb: Aether.ErrorWatcher): Aether.Unsubscribe;
  /**
   * Other tabs' cursors in the room, this browser's sibling tabs included. When the tabs of a
   * browser share one socket, a tab's cursor id is `<connection id>:<tab id>`.
   */
  onPresence(cb: Aether.PresenceWatcher): Aether.Unsubscribe;
  /** A cursor left (its tab closed, or the shared connection carrying it ended). */
  onPresenceLeave(cb: Aether.LeaveWatcher): Aether.Unsubscribe;

  /** Resolves once there is a state to show: the cache, the relay's snapshot, or a sibling tab's. */
  ready(): Promise<void>;
  /** Synchronous `ready()`. */
  readonly isReady: boolean;
  /** True from the relay's `hello` until the connection closes. */
  readonly connected: boolean;
  /** This connection's id from `hello` (null while disconnected). */
  readonly clientId: string | null;
  /** This connection's colour from `hello`, e.g. `hsl(8, 78%, 62%)` (null while disconnected). */
  readonly clientColor: string | null;
  /**
   * The id other tabs see this tab's cursor under in `onPresence`: `clientId`, or, when the
   * browser's tabs share one socket, `<clientId>:<tab id>` (null while disconnected).
   */
  readonly cursorId: string | null;
  /** 2 with aether-actix, 1 with an upstream server, null before the first `hello`. */
  readonly protocol: 1 | 2 | null;
  /** v2: the relay's node id. */
  readonly node: string | null;
  /** The room (`opts.room`); null for the default room. */
  readonly room: string | null;
  /** v2 with a JWT: the user (`sub`) the relay's `hello` named; null otherwise. */
  readonly user: string | null;
  /** From the last `hello` or `auth_ok`: 'read' (writes come back refused) or 'write'; null before. */
  readonly access: 'read' | 'write' | null;
  readonly status: Aether.Status;

  /**
   * Sends an ephemeral cursor position (int32), never queued; dropped while writes wait to be sent.
   * With a shared socket it carries this tab's id, and is sent again on every new connection.
   */
  sendPresence(x: number, y: number): void;
  /** Forgets the cached state (not pending writes). */
  clearCache(): void;
  /**
   * Connects now: after an auth failure or refusal (optionally with a new token), or to skip a
   * backoff wait. A token of another user switches the storage scope.
   */
  reconnect(opts?: { token?: Aether.Token; authToken?: string }): void;
  /** Disconnects for good; pending writes stay persisted for the next instance. */
  close(): void;

  static readonly version: string;
  static readonly Aether: typeof Aether;
  static readonly default: typeof Aether;
}

declare namespace Aether {
  /** Any JSON value. */
  type Value = string | number | boolean | null | object;

  /**
   * A token: a string, or a function giving one (or a promise of one), asked on every connect and,
   * when the relay's `hello` names an expiry, again before it (the fresh token is sent on the live
   * connection).
   */
  type Token = string | (() => string | PromiseLike<string>);

  interface Options {
    /** Reconnect after a close (default true). Never after an auth failure. */
    autoReconnect?: boolean;
    /** Backoff cap in ms (default 30000; 4× after "server busy"/"too slow" closes). */
    maxReconnectDelayMs?: number;
    /** First backoff step in ms (default 200). */
    minReconnectDelayMs?: number;
    /** Keep state and pending writes in localStorage (default true). */
    persist?: boolean;
    /**
     * localStorage key of the state cache (default `'aether::state::' + url`); with a `room`,
     * `'::room::' + room` is appended, with a token `'::user::' + user`. Outboxes, client id, tab
     * channel and locks live under it.
     */
    cacheKey?: string;
    /**
     * The room (1-128 of `A-Z a-z 0-9 - _ . :`, not starting with `_`); omitted: the default room.
     * Sent as `?room=`.
     */
    room?: string;
    /**
     * The shared secret or a JWT, or a function giving one: sent as `?auth_token=` and as a first
     * `auth` frame; a function is asked again before the token expires.
     */
    token?: Token;
    /** The older name of `token` (a string); `token` wins when both are given. */
    authToken?: string;
    /** 2 (default): ask for protocol v2 (`?v=2`); 1: speak upstream's protocol only. */
    protocol?: 1 | 2;
    /** Messages sent at once after connecting before pacing starts (default 100). */
    sendBurst?: number;
    /** Sustained messages per second (default 50; 0 disables pacing). */
    sendRatePerSecond?: number;
    /** Writes with longer keys fail locally with 'bad_key' (default 256; 0: unchecked). */
    maxKeyBytes?: number;
    /** Writes with larger values fail locally with 'bad_value' (default 32768; 0: unchecked). */
    maxValueBytes?: number;
    /** Forget an acknowledged write for supersede purposes after this long (default 0: never). */
    supersedeWindowMs?: number;
    /** Keys whose latest write is remembered for supersede (default 1024, oldest forgotten). */
    maxTrackedWrites?: number;
    /** Without Web Locks: another tab's outbox with no heartbeat for this long is adopted (default 60000). */
    outboxStaleMs?: number;
    /** A write unacknowledged this long makes the client check the connection (default 15000). */
    ackTimeoutMs?: number;
    /** v2: ping the relay after this long without a frame (default 25000; 0: only when a write is overdue). */
    pingIntervalMs?: number;
    /** No frame this long after a ping: reconnect at once (default 5000). */
    pingTimeoutMs?: number;
    /**
     * Web Locks (default `navigator.locks`): outbox ownership, and the leader tab that owns the
     * scope's one socket; null: every tab its own socket, the BroadcastChannel probe for outboxes.
     */
    locks?: LockManagerLike | null;
    /** WebSocket constructor (default: the global one; null: never connect). */
    WebSocket?: WebSocketConstructorLike | null;
    /** Storage (default: localStorage; null: no persistence). */
    storage?: StorageLike | null;
    /** BroadcastChannel constructor (default: the global one; null: no tab sync). */
    BroadcastChannel?: BroadcastChannelConstructorLike | null;
  }

  interface Write<T = Value> {
    readonly key: string;
    readonly op: 'set' | 'delete';
    /** The value as sent (a JSON copy); undefined for a delete. */
    readonly value: T | undefined;
    readonly status: 'pending' | 'durable' | 'failed';
    /** v2: the relay's stamp (`<p>.<l>.<node>`, compares as text) once durable. */
    readonly stamp: string | null;
    /** v2: the relay's sequence number once durable. */
    readonly seq: number | null;
    /** Why it failed: the relay's nack reason ('bad_key', 'bad_value', …), 'not_json' or 'closed'. */
    readonly reason: string | null;
    /** Settles when the relay acknowledges (v2) or echoes (v1) the write; rejects with AetherWriteError. */
    readonly durable: Promise<Write<T>>;
  }

  class AetherWrite<T = Value> implements Write<T> {
    private constructor();
    readonly key: string;
    readonly op: 'set' | 'delete';
    readonly value: T | undefined;
    readonly status: 'pending' | 'durable' | 'failed';
    readonly stamp: string | null;
    readonly seq: number | null;
    readonly reason: string | null;
    readonly durable: Promise<Write<T>>;
  }

  class AetherWriteError extends Error {
    private constructor();
    readonly name: 'AetherWriteError';
    readonly reason: string;
    readonly key: string;
    readonly write: Write<unknown>;
  }

  interface Status {
    connected: boolean;
    protocol: 1 | 2 | null;
    clientId: string | null;
    /** Close code of the last close (null while connected). */
    code: number | null;
    reason: string | null;
    /** When the next attempt starts, in ms (null: none scheduled). */
    retryInMs: number | null;
    /** True after an auth failure or a refusal (forbidden, bad room): no reconnect until `reconnect()`. */
    fatal: boolean;
    /** Writes waiting for acknowledgement. */
    pending: number;
  }

  interface ErrorInfo {
    /**
     * 'auth' (4401; fatal, or not fatal when a token function failed), 'forbidden' (4403: the token
     * does not grant the room), 'room' (4400: a bad room name, or a relay without rooms), 'storage'
     * (reason 'quota'): localStorage is full; see README "Full storage".
     */
    type: 'auth' | 'forbidden' | 'room' | 'rate-limit' | 'too-big' | 'storage';
    /** The close code; null for 'storage' and for a failed token function. */
    code: number | null;
    reason: string;
    fatal: boolean;
    message: string;
  }

  type Unsubscribe = () => void;
  type KeyWatcher<T = Value> = (newValue: T | undefined, oldValue: T | undefined) => void;
  type AnyWatcher = (key: string, newValue: Value | undefined, oldValue: Value | undefined) => void;
  type StatusWatcher = (connected: boolean, status: Status) => void;
  type SupersedeWatcher = (key: string, attempted: Value | undefined, actual: Value | undefined) => void;
  type ErrorWatcher = (error: ErrorInfo) => void;
  /** `user`: the sender's user (`sub`) when it connected with a JWT, else null. */
  type PresenceWatcher = (id: string, x: number, y: number, color: string, user: string | null) => void;
  type LeaveWatcher = (id: string) => void;

  /** The part of the Web Locks API the client uses (`navigator.locks`). */
  interface LockManagerLike {
    request(name: string, callback: (lock: unknown) => unknown): Promise<unknown>;
    request(name: string, options: { signal?: AbortSignal; ifAvailable?: boolean; steal?: boolean }, callback: (lock: unknown) => unknown): Promise<unknown>;
  }

  interface WebSocketLike {
    readonly readyState?: number;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: any) => any) | null;
    onmessage: ((ev: any) => any) | null;
    onclose: ((ev: any) => any) | null;
    onerror: ((ev: any) => any) | null;
  }
  type WebSocketConstructorLike = new (url: string) => WebSocketLike;

  interface StorageLike {
    getItem(key: string): string | null;
    setItem(key: string, value: string): void;
    removeItem(key: string): void;
    readonly length?: number;
    key?(index: number): string | null;
  }

  interface BroadcastChannelLike {
    postMessage(message: unknown): void;
    close(): void;
    onmessage: ((ev: any) => any) | null;
  }
  type BroadcastChannelConstructorLike = new (name: string) => BroadcastChannelLike;

  // Upstream's type names.
  type AetherValue = Value;
  type AetherOptions = Options;
}

declare global {
  interface Window {
    Aether: typeof Aether;
  }
}
