import { timingSafeEqual, createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { ApiError } from './errors.js';

/** Constant-time comparison of HTTP Basic credentials (any user name, the configured password). The scheme is case-insensitive (RFC 7235). */
export function checkBasicAuth(header: string | undefined, password: string): boolean {
  const m = /^basic +([A-Za-z0-9+/=]+)$/i.exec(header ?? '');
  if (!m) return false;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  return decoded.includes(':') && sameSecret(decoded.slice(decoded.indexOf(':') + 1), password);
}

/** Constant-time comparison of a bearer token. */
export function checkBearer(header: string | undefined, token: string): boolean {
  const m = /^bearer +(\S+)$/i.exec(header ?? '');
  return m !== null && sameSecret(m[1]!, token);
}

/** Both sides hashed, so the comparison takes the same time whatever the lengths. */
function sameSecret(given: string, secret: string): boolean {
  return timingSafeEqual(createHash('sha256').update(given).digest(), createHash('sha256').update(secret).digest());
}

/**
 * Failed logins per client address: after FAILURES_ALLOWED in a window, the
 * address is answered 429 with Retry-After until the window passes, whatever
 * it sends (guessing a password takes days instead of seconds). A success
 * forgets the address's failures.
 */
const WINDOW_MS = 60_000;
const FAILURES_ALLOWED = 10;

const addressOf = (req: IncomingMessage) => req.socket.remoteAddress ?? '?';

export class AuthThrottle {
  private failures = new Map<string, { count: number; since: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Throws 429 when this address has failed too often lately. */
  check(req: IncomingMessage): void {
    const entry = this.entry(req);
    if (entry && entry.count >= FAILURES_ALLOWED) {
      const retry = Math.ceil((entry.since + WINDOW_MS - this.now()) / 1000);
      throw new ApiError('too_many_requests', 'Too many failed logins from this address; wait', {}, { 'Retry-After': String(Math.max(1, retry)) });
    }
  }

  failed(req: IncomingMessage): void {
    const entry = this.entry(req) ?? { count: 0, since: this.now() };
    entry.count++;
    this.failures.set(addressOf(req), entry);
    // Bounded memory under a flood of addresses: forget the oldest.
    if (this.failures.size > 10_000) this.failures.delete(this.failures.keys().next().value!);
  }

  succeeded(req: IncomingMessage): void {
    this.failures.delete(addressOf(req));
  }

  private entry(req: IncomingMessage): { count: number; since: number } | undefined {
    const key = addressOf(req);
    const entry = this.failures.get(key);
    if (entry && this.now() - entry.since > WINDOW_MS) {
      this.failures.delete(key);
      return undefined;
    }
    return entry;
  }
}

/** Basic auth with the admin password, throttled per address: 401 or 429, else nothing. */
export function requireAdmin(req: IncomingMessage, password: string, throttle: AuthThrottle, realm: string): void {
  throttle.check(req);
  if (!checkBasicAuth(req.headers.authorization, password)) {
    throttle.failed(req);
    throw new ApiError('unauthorized', 'This needs the admin password', {}, { 'WWW-Authenticate': `Basic realm="${realm}", charset="UTF-8"` });
  }
  throttle.succeeded(req);
}

/**
 * A request that changes something must come from this site: a browser adds
 * Origin to cross-site POSTs, and a form from elsewhere would otherwise ride
 * on the browser's remembered Basic credentials. No Origin (curl, scripts) is fine.
 */
export function requireSameOrigin(req: IncomingMessage): void {
  const origin = req.headers.origin;
  if (origin === undefined) return;
  let host: string | undefined;
  try {
    host = new URL(origin).host;
  } catch {
    host = undefined;
  }
  if (host !== req.headers.host) throw new ApiError('forbidden', `Requests from ${origin} may not change anything here`);
}
