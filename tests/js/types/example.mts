// Typed usage of the client as an ES module (the package's "import" condition).
import Aether, { AetherWriteError, type AetherOptions, type Write } from 'aether-actix-client';

interface Card {
  title: string;
  done: boolean;
  tags?: string[];
}

const options: AetherOptions = {
  autoReconnect: true,
  maxReconnectDelayMs: 5000,
  persist: true,
  cacheKey: 'aether::kanban::v1',
  authToken: 'secret',
  sendBurst: 100,
  sendRatePerSecond: 50,
};
const aether = new Aether('ws://127.0.0.1:8211/ws', options);

const w: Write<Card> = aether.set<Card>('card:1', { title: 'first', done: false });
w.durable.then((done) => {
  const stamp: string | null = done.stamp;
  const seq: number | null = done.seq;
  console.log(stamp, seq, done.status === 'durable');
}, (err: unknown) => {
  if (err instanceof AetherWriteError) console.log(err.reason, err.key);
});
aether.set('nothing', null);
aether.set('gone', undefined);
const del = aether.delete('card:2');
void del.durable;

const card = aether.get<Card>('card:1');
if (card) console.log(card.title.toUpperCase());
const present: boolean = aether.has('card:1');
const keys: string[] = aether.keys();
const all = aether.snapshot();
console.log(present, keys, all['card:1']);

const off = aether.on<Card>('card:1', (next, prev) => console.log(next?.done, prev?.done));
off();
aether.onAny((key, next, prev) => console.log(key, next, prev));
aether.onStatus((connected, status) => console.log(connected, status.protocol, status.retryInMs, status.fatal));
aether.onSupersede((key, attempted, actual) => console.log(key, attempted, actual));
aether.onError((e) => {
  if (e.type === 'auth' && e.fatal) aether.reconnect({ authToken: 'new' });
});
aether.onPresence((id, x, y, color) => console.log(id, x + y, color));
aether.onPresenceLeave((id) => console.log(id));
aether.sendPresence(10, 20);

async function main(): Promise<void> {
  await aether.ready();
  await aether.whenDurable('card:1');
  await aether.whenDurable();
  const n: number = aether.pendingWrites();
  const id: string | null = aether.clientId;
  const color: string | null = aether.clientColor;
  const cursor: string | null = aether.cursorId;
  const proto: 1 | 2 | null = aether.protocol;
  console.log(n, id, color, cursor, proto, aether.connected, aether.isReady, aether.node, Aether.version);
  aether.clearCache();
  aether.close();
}
void main();

// Injected transports (Node, tests).
const offline = new Aether('ws://x', { WebSocket: null, storage: null, BroadcastChannel: null });
offline.close();
// The browser's own classes fit the injection points.
const browserish = new Aether('ws://x', { WebSocket, storage: localStorage, BroadcastChannel });
browserish.close();

// Rooms and tokens: a room, a token function (sync or async), who and what the relay said.
import type { AetherToken } from 'aether-actix-client';
const fetchToken: AetherToken = async () => (await fetch('/token?room=board-42')).text();
const board = new Aether('ws://127.0.0.1:8211/ws', { room: 'board-42', token: fetchToken });
const room: string | null = board.room;
const user: string | null = board.user;
const access: 'read' | 'write' | null = board.access;
console.log(room, user, access);
board.onError((e) => {
  if (e.type === 'forbidden' || e.type === 'room') console.log(e.code, e.reason);
  if (e.type === 'auth' && e.fatal) board.reconnect({ token: () => 'a fresh token' });
});
board.onPresence((id, x, y, color, who) => console.log(id, x, y, color, who ?? 'anonymous'));
new Aether('ws://x', { room: 'r', token: 'shared-secret', WebSocket: null }).close();
new Aether('ws://x', { token: () => 'sync', WebSocket: null }).close();
board.close();
