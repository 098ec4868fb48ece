import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../lib/logger.js';
import type { Deps } from './deps.js';

export interface Ctx {
  req: IncomingMessage;
  res: ServerResponse;
  url: URL;
  /** Positional captures of the route's pattern. */
  params: string[];
  log: Logger;
  deps: Deps;
}

export interface Route {
  method: 'GET' | 'POST' | 'PATCH';
  /** The route as documented ("/orders/:id/pay"), used for metrics labels and the 405 check. */
  path: string;
  handler: (ctx: Ctx) => Promise<void>;
}

export interface CompiledRoute extends Route {
  pattern: RegExp;
}

export function compile(routes: Route[]): CompiledRoute[] {
  return routes.map((r) => ({
    ...r,
    pattern: new RegExp('^' + r.path.replace(/:[a-z_]+/g, '([^/]+)') + '/?$'),
  }));
}

export type Match =
  | { kind: 'found'; route: CompiledRoute; params: string[] }
  | { kind: 'wrong_method'; allow: string[]; path: string }
  | { kind: 'none' };

/** Literal segments win over parameters ("/products/top" before "/products/:id"): routes are tried in order. */
export function match(routes: CompiledRoute[], method: string, pathname: string): Match {
  const allow: string[] = [];
  let path = '';
  for (const route of routes) {
    const m = route.pattern.exec(pathname);
    if (!m) continue;
    if (route.method === method || (method === 'HEAD' && route.method === 'GET')) {
      return { kind: 'found', route, params: m.slice(1).map((p) => decodeURIComponent(p)) };
    }
    allow.push(route.method);
    path ||= route.path;
  }
  return allow.length > 0 ? { kind: 'wrong_method', allow: [...new Set(allow)], path } : { kind: 'none' };
}
