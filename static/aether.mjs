/*!
 * aether.mjs — ES module entry of the aether-actix browser client.
 *
 *   import Aether from '/aether.mjs';          // a browser, natively, no build step
 *   import Aether from 'aether-actix-client';  // Node, bundlers
 *
 * The implementation is aether.js (one file for <script>, CommonJS and this module). Loaded as a
 * module by a browser it has no exports and sets globalThis.Aether; loaded by Node or a bundler it
 * is CommonJS and its module.exports is the class. Either way the same class is exported here.
 */
import * as loaded from './aether.js';

const Aether = (loaded && loaded.default) || globalThis.Aether;

export default Aether;
export { Aether };
export const AetherWrite = Aether.AetherWrite;
export const AetherWriteError = Aether.AetherWriteError;
