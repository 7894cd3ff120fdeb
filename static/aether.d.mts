/**
 * ES module types for aether.mjs (the same class as aether.js; see aether.d.ts).
 */
import Aether from './aether.js';

export default Aether;
export { Aether };
export import AetherWrite = Aether.AetherWrite;
export import AetherWriteError = Aether.AetherWriteError;

export type AetherValue = Aether.Value;
export type AetherOptions = Aether.Options;
export type AetherToken = Aether.Token;
export type Write<T = Aether.Value> = Aether.Write<T>;
export type AetherStatus = Aether.Status;
export type AetherErrorInfo = Aether.ErrorInfo;
export type Unsubscribe = Aether.Unsubscribe;
export type KeyWatcher<T = Aether.Value> = Aether.KeyWatcher<T>;
export type AnyWatcher = Aether.AnyWatcher;
export type StatusWatcher = Aether.StatusWatcher;
export type SupersedeWatcher = Aether.SupersedeWatcher;
export type ErrorWatcher = Aether.ErrorWatcher;
export type PresenceWatcher = Aether.PresenceWatcher;
export type LeaveWatcher = Aether.LeaveWatcher;
