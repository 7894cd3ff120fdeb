/* react-dom-client.mjs — `react-dom/client` (createRoot, hydrateRoot) on top of ./react-dom.mjs. */
import ReactDOM from './react-dom.mjs';

export const { createRoot, hydrateRoot } = ReactDOM;
export default { createRoot, hydrateRoot };
