/*
 * react.mjs — React 18.3.1 as an ES module, without a build step: evaluates React's own UMD build
 * (react.production.min.js, copied unchanged from the `react` package), which sets
 * `globalThis.React`, and re-exports it. Map `react` here with an import map.
 */
import './react.production.min.js';

const React = globalThis.React;
export default React;
export const {
  Children, Component, Fragment, Profiler, PureComponent, StrictMode, Suspense,
  __SECRET_INTERNALS_DO_NOT_USE_OR_YOU_WILL_BE_FIRED, act, cloneElement, createContext, createElement,
  createFactory, createRef, forwardRef, isValidElement, lazy, memo, startTransition, unstable_act,
  useCallback, useContext, useDebugValue, useDeferredValue, useEffect, useId, useImperativeHandle,
  useInsertionEffect, useLayoutEffect, useMemo, useReducer, useRef, useState, useSyncExternalStore,
  useTransition, version,
} = React;
