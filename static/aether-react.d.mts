/**
 * Types for aether-react.mjs: React hooks for the aether-actix browser client (React 18+).
 * aether-react.d.mts is an identical copy, for TypeScript's ES-module resolution.
 */

type AetherClient = InstanceType<typeof import('./aether.js')>;
type AetherOptions = import('./aether.js').Options;
type AetherValue = import('./aether.js').Value;
type AetherWriteHandle<T> = import('./aether.js').Write<T>;
type AetherStatusInfo = import('./aether.js').Status;

/**
 * Defaults for every hook: the relay URL and client options (`room`, `token`, …), or an existing
 * client. Every option tells clients apart: hooks with another room, token, URL or cache key get
 * (and close) their own. A token function counts by identity: create it once, outside the
 * component (or with useCallback), or every render opens a new client.
 */
export interface AetherConfig extends AetherOptions {
  url?: string;
  client?: AetherClient;
}

/** Per-hook override of the configured defaults. */
export type AetherHookOptions = AetherConfig;

export interface AetherMeta {
  readonly ready: boolean;
  readonly connected: boolean;
  /** null until the hook has mounted and opened its client, and always on a server. */
  readonly client: AetherClient | null;
}

export type SetAetherValue<T> = (
  next: T | undefined | ((previous: T) => T | undefined)
) => AetherWriteHandle<T>;

export interface AetherSnapshotResult {
  readonly data: Readonly<Record<string, AetherValue>>;
  readonly setKey: <T = AetherValue>(key: string, value: T | undefined) => AetherWriteHandle<T>;
  readonly deleteKey: (key: string) => AetherWriteHandle<never>;
  readonly ready: boolean;
  readonly connected: boolean;
  /** null until the hook has mounted and opened its client, and always on a server. */
  readonly client: AetherClient | null;
}

export interface AetherStatusResult {
  readonly connected: boolean;
  readonly ready: boolean;
  readonly status: AetherStatusInfo;
  /** null until the hook has mounted and opened its client, and always on a server. */
  readonly client: AetherClient | null;
}

export declare function configureAether(config: AetherConfig): void;
/**
 * The shared client for this configuration, opened now if needed. The app owns it: hooks never
 * close it; `client.close()` does, and the next call opens a new one.
 */
export declare function getAether(options?: AetherHookOptions): AetherClient;

export declare function useAether<T = AetherValue>(
  key: string,
  defaultValue: T,
  options?: AetherHookOptions
): [T, SetAetherValue<T>, AetherMeta];
export declare function useAether<T = AetherValue>(
  key: string,
  defaultValue?: undefined,
  options?: AetherHookOptions
): [T | undefined, SetAetherValue<T | undefined>, AetherMeta];

export declare function useAetherSnapshot(options?: AetherHookOptions): AetherSnapshotResult;

export declare function useAetherSupersede(
  callback: (key: string, attempted: AetherValue | undefined, actual: AetherValue | undefined) => void,
  deps?: readonly unknown[],
  options?: AetherHookOptions
): void;

export declare function useAetherStatus(options?: AetherHookOptions): AetherStatusResult;

export declare const Aether: typeof import('./aether.js');
export default useAether;
