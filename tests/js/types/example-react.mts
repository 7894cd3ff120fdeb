// Typed usage of the React hooks ('aether-actix-client/react').
import useAetherDefault, {
  configureAether,
  getAether,
  useAether,
  useAetherSnapshot,
  useAetherStatus,
  useAetherSupersede,
  type AetherMeta,
} from 'aether-actix-client/react';

configureAether({ url: 'ws://127.0.0.1:8211/ws', persist: true });
const client = getAether();
client.set('k', 1);

export function useTitle(): [string, AetherMeta] {
  const [title, setTitle, meta] = useAether('doc:title', 'Untitled');
  setTitle('next');
  setTitle((prev) => prev + '!');
  setTitle(undefined); // deletes
  const w = setTitle('x');
  void w.durable;
  return [title, meta];
}

export function useCount(): number | undefined {
  const [count, setCount] = useAether<number>('count');
  setCount((prev) => (prev ?? 0) + 1);
  return count;
}

export function useBoard(): number {
  const { data, setKey, deleteKey, ready, connected } = useAetherSnapshot();
  setKey('a', { x: 1 });
  deleteKey('b');
  useAetherSupersede((key, attempted, actual) => console.log(key, attempted, actual), []);
  const { status } = useAetherStatus();
  console.log(ready, connected, status.pending);
  return Object.keys(data).length;
}

const same: typeof useAether = useAetherDefault;
void same;

// Hooks in a room with a token function (created once, outside the component).
const boardToken = async (): Promise<string> => 'jwt';
export function useBoardTitle(): string {
  const [title] = useAether('title', 'Board', { room: 'board-42', token: boardToken });
  const { data } = useAetherSnapshot({ room: 'board-42', token: boardToken });
  const { client: c } = useAetherStatus({ room: 'board-42', token: boardToken });
  console.log(data, c?.room, c?.access);
  return title;
}
