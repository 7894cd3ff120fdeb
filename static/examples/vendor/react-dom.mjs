/*
 * react-dom.mjs — ReactDOM 18.3.1 as an ES module, without a build step: evaluates ReactDOM's own
 * UMD build (react-dom.production.min.js, copied unchanged from the `react-dom` package; it needs
 * `globalThis.React`, which ./react.mjs sets first) and re-exports `globalThis.ReactDOM`.
 */
import './react.mjs';
import './react-dom.production.min.js';

const ReactDOM = globalThis.ReactDOM;
export default ReactDOM;
export const {
  __SECRET_INTERNALS_DO_NOT_USE_OR_YOU_WILL_BE_FIRED, createPortal, createRoot, findDOMNode, flushSync,
  hydrate, hydrateRoot, render, unmountComponentAtNode, unstable_batchedUpdates,
  unstable_renderSubtreeIntoContainer, version,
} = ReactDOM;
