// Typed usage from CommonJS (the package's "require" condition).
import Aether = require('aether-actix-client');

const a = new Aether('ws://127.0.0.1:8211/ws', { persist: false });
const w: Aether.Write<number> = a.set('n', 1);
const opts: Aether.Options = { protocol: 1 };
const err: typeof Aether.AetherWriteError = Aether.AetherWriteError;
console.log(w.key, opts, err.name);
a.close();
