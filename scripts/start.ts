import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../lib/paths.js';
import { commandLine, fail } from '../lib/cli.js';
import { getConfig, ConfigError, type Config } from '../lib/config.js';
import { createDb } from '../db/pool.js';
import { createLogger } from '../lib/logger.js';
import { removeRunningSystem, runningSystem, writeRunningSystem } from '../lib/running.js';
import { killSpawned, portAnswers, postgres, redis, withDatabase, type Service } from './local-services.js';
import { seedCatalogue } from './seed.js';
import { Supervisor, type Program } from './supervisor.js';

const USAGE = `usage: npm start [-- options]

Runs the whole system on this machine: PostgreSQL and Redis (the ones the
environment names, else local ones, else its own), the migrations, then every
Procfile process, until Ctrl-C (or SIGTERM) stops it all.

options
  --scale name=count   how many of a Procfile process (web, relay, worker); repeatable
  --own                start its own PostgreSQL and Redis even if local ones answer
  --no-seed            leave an empty catalogue empty (by default a demo catalogue is added)
  -h, --help           this text

examples
  npm start
  npm start -- --scale worker=3 --scale web=2
  PORT=4000 LOG_LEVEL=info npm start -- --own

The environment is read as by every process (README, Configuration).`;

const say = (line: string) => console.log(process.stdout.isTTY ? `\x1b[1mstart\x1b[0m  ${line}` : `start  ${line}`);

class StartError extends Error {}
/** A signal came before the processes ran: what has started is stopped. */
class Stopped extends Error {}

function parseCommandLine(): { scale: string[]; own: boolean; seed: boolean } {
  const { values, positionals } = commandLine('start', USAGE, { scale: { type: 'string', multiple: true }, own: { type: 'boolean' }, 'no-seed': { type: 'boolean' } }, true);
  const [extra] = positionals;
  if (extra !== undefined) {
    // `npm start --scale worker=2` (without --) gives npm the option and us the value.
    const hint = /^[a-z]+=\d+$/.test(extra) ? `; did you mean npm start -- --scale ${extra}? (npm keeps the options before --)` : '';
    fail('start', `unexpected argument "${extra}"${hint}`);
  }
  return { scale: values.scale ?? [], own: values.own ?? false, seed: !values['no-seed'] };
}

function parseProcfile(): Map<string, string> {
  const procs = new Map<string, string>();
  for (const line of fs.readFileSync(path.join(projectRoot, 'Procfile'), 'utf8').split('\n')) {
    const m = /^([a-z]+):\s*(.+)$/.exec(line.trim());
    if (m) procs.set(m[1]!, m[2]!);
  }
  return procs;
}

function parseScale(specs: string[], procs: Map<string, string>): Map<string, number> {
  const scale = new Map([...procs.keys()].filter((k) => k !== 'release').map((k) => [k, 1]));
  for (const spec of specs.flatMap((s) => s.split(','))) {
    const m = /^([a-z]+)=(\d+)$/.exec(spec);
    if (!m || !scale.has(m[1]!)) fail('start', `--scale takes name=count with name one of ${[...scale.keys()].join(', ')} (got "${spec}")`);
    scale.set(m[1]!, Number(m[2]));
  }
  return scale;
}

/** true once `url`/readyz answers 200 (every backing service reached), else what it said last. */
async function waitForReady(url: string, ms: number, alive: () => boolean): Promise<true | string> {
  const deadline = Date.now() + ms;
  let last = 'no answer';
  while (Date.now() < deadline && alive()) {
    const answer = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(1000) }).then(
      async (r) => (r.ok ? true : notReady(await r.text())),
      () => 'no answer',
    );
    if (answer === true) return true;
    last = answer;
    await new Promise((r) => setTimeout(r, 200));
  }
  return last;
}

/** The checks a /readyz body names as failing, in one line. */
function notReady(body: string): string {
  try {
    const { checks } = JSON.parse(body) as { checks?: Record<string, string> };
    const bad = Object.entries(checks ?? {}).filter(([, v]) => v !== 'ok');
    if (bad.length > 0) return bad.map(([k, v]) => `${k}: ${v}`).join('; ');
  } catch {
    // not JSON: say so below
  }
  return `not ready: ${body.slice(0, 200)}`;
}

/**
 * npm start: see USAGE. Comes up completely or not at all: a taken port, a
 * bad setting, a Redis that does not answer, a failed migration, a process
 * that cannot start or a web that is not ready (/readyz) within 30 s end it
 * with one line and a non-zero exit, its own PostgreSQL and Redis stopped,
 * no process left behind. Ctrl-C stops the processes first and its own
 * PostgreSQL and Redis after them (they run in a process group of their
 * own, so a terminal's Ctrl-C does not stop them under the processes).
 */
async function main(): Promise<number> {
  const args = parseCommandLine();
  // Every setting is checked before anything starts, naming the variable.
  let config: Config = getConfig();
  const procs = parseProcfile();
  const scale = parseScale(args.scale, procs);
  const webs = Array.from({ length: scale.get('web') ?? 0 }, (_, i) => config.PORT + 100 * i);
  const already = runningSystem();
  for (const port of webs) {
    if (!(await portAnswers(port))) continue;
    if (already?.webs.includes(`http://localhost:${port}`)) throw new StartError(`npm start runs already (pid ${already.pid}, port ${port}); stop it first`);
    throw new StartError(`port ${port} is taken by another program; stop it or set PORT`);
  }

  // A terminal closed under npm start: its lines have nowhere to go, which must not end it before it has stopped.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  const owned: Service[] = [];
  const stopOwned = async () => {
    for (const s of owned.reverse()) await s.stop().catch(() => undefined);
    owned.length = 0;
  };
  // A last resort if this process ends any other way: nothing of ours outlives it (what local-services has spawned
  // included, ready or not).
  process.once('exit', () => {
    removeRunningSystem();
    killSpawned();
  });
  // Signals: from the start, so that a Ctrl-C while the services start or the migrations run stops what has started
  // (the default action would end this process and leave our own PostgreSQL and Redis, in their own process group,
  // running). Before the processes run, each step checks `stopping`; once they run, the supervisor stops them. A
  // second signal kills everything at once, our own PostgreSQL (immediate shutdown) and Redis included.
  let stopping = false;
  let supervisor: Supervisor | undefined;
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      say(stopping ? 'a second signal: killing every process now' : 'stopping…');
      if (stopping) killSpawned();
      stopping = true;
      supervisor?.stop();
    });
  }
  const step = async <T>(fn: () => Promise<T> | T, keep: (result: T) => void = () => undefined): Promise<T> => {
    const result = await fn();
    keep(result); // what must be stopped, before giving up
    await new Promise(setImmediate); // a signal that came meanwhile (spawnSync blocks) is handled first
    if (stopping) throw new Stopped();
    return result;
  };
  const own = (s: Service) => void (s.origin === 'own' && owned.push(s));
  try {
    // Redis first: one the environment names that does not answer ends npm start before anything starts.
    const redisService = await step(() => redis(say, args.own), own);
    const pgService = await step(() => postgres(say, args.own), own);

    const env: Record<string, string> = {
      DATABASE_URL: process.env.DATABASE_URL ?? withDatabase(pgService.url, 'write_db'),
      READ_DATABASE_URL: process.env.READ_DATABASE_URL ?? withDatabase(pgService.url, 'read_db'),
      REDIS_URL: redisService.url,
      ADMIN_PASSWORD: process.env.ADMIN_PASSWORD ?? randomBytes(9).toString('base64url'),
      // Quiet on success, coloured lines in a terminal; JSON lines when written to a file or a pipe.
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
      LOG_FORMAT: process.env.LOG_FORMAT ?? (process.stdout.isTTY ? 'pretty' : 'json'),
    };
    config = getConfig({ ...process.env, ...env });
    say(`PostgreSQL: ${pgService.origin} · Redis: ${redisService.origin} (${redisService.url})`);

    const release = await step(() => spawnSync(process.execPath, [path.join(projectRoot, 'dist', 'db', 'release.js')], { cwd: projectRoot, env: { ...process.env, ...env }, stdio: ['ignore', 'inherit', 'inherit'] }));
    if (release.status !== 0) throw new StartError('the migrations failed (see the line above)');
    if (args.seed) {
      const db = createDb(config.DATABASE_URL, { name: 'seed', max: 1, log: createLogger('warn', 'seed') });
      const n = await step(() => seedCatalogue(db).finally(() => db.end()));
      if (n > 0) say(`added a demo catalogue of ${n} products to the empty database (--no-seed to leave it empty)`);
    }

    // Like foreman, each extra web process gets its own port (PORT + 100 × i).
    const colours: Record<string, number> = { web: 36, relay: 35, worker: 33 };
    const programs: Program[] = [...scale].flatMap(([name, count]) =>
      Array.from({ length: count }, (_, i) => ({ name: `${name}.${i + 1}`, command: procs.get(name)!, cwd: projectRoot, colour: colours[name] ?? 34, env: { ...process.env, ...env, ...(name === 'web' ? { PORT: String(config.PORT + 100 * i) } : {}) } })),
    );
    // A process that keeps failing stops everything: the system is up completely or not at all. SIGKILL for what
    // has not stopped a few seconds after its own shutdown deadline.
    const sup = new Supervisor(programs, { restarts: 2, restartDelayMs: 1000, killTimeoutMs: config.SHUTDOWN_TIMEOUT_MS + 3000 });
    supervisor = sup;
    const alive = () => !stopping && sup.failed === undefined;
    const urls = webs.map((p) => `http://localhost:${p}`);
    const ready = await Promise.all(urls.map((u) => waitForReady(u, 30_000, alive)));
    let failed: string | undefined;
    if (ready.every((r) => r === true) && alive()) {
      writeRunningSystem({ pid: process.pid, env: { DATABASE_URL: env.DATABASE_URL!, READ_DATABASE_URL: env.READ_DATABASE_URL!, REDIS_URL: env.REDIS_URL!, ADMIN_PASSWORD: env.ADMIN_PASSWORD! }, webs: urls });
      banner(urls, env.ADMIN_PASSWORD!, [...scale].map(([n, c]) => `${n}×${c}`).join(' '));
    } else if (alive()) {
      const [url, why] = urls.map((u, i) => [u, ready[i]] as const).find(([, r]) => r !== true)!;
      failed = `${url} was not ready within 30 s (${why})`;
      sup.stop();
    }
    await sup.done;
    // A process that kept exiting is a failure even if a Ctrl-C came meanwhile.
    if (sup.failed || (failed && !stopping)) throw new StartError(`${sup.failed ?? failed}; everything is stopped (its output is above)`);
    return 0;
  } catch (err) {
    if (err instanceof Stopped) return 0; // stopped as asked, before the processes ran
    throw err;
  } finally {
    removeRunningSystem();
    await stopOwned();
  }
}

function banner(urls: string[], password: string, processes: string): void {
  const [first] = urls;
  say('');
  say(`up: ${processes}`);
  for (const u of urls) say(`API        ${u}   dashboard ${u}/   OpenAPI ${u}/openapi.json`);
  if (first) {
    say(`Bull Board ${first}/admin/queues   user: any   password: ${password}`);
    say(`try        curl -s ${first}/products?limit=3`);
    say(`           curl -s -X POST ${first}/orders -H 'content-type: application/json' -d '{"customer_id":1,"items":[{"product_id":1,"quantity":2}]}'`);
    say(`           curl -s ${first}/analytics/customers/1`);
    say(`           npm run loadgen -- --rate 200 --duration 30        npm run verify`);
  }
  say('logs: warnings and errors only (LOG_LEVEL=info npm start for more) · Ctrl-C stops everything');
  say('');
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    const message = err instanceof ConfigError ? `bad configuration: ${err.message}` : (err as Error).message;
    console.error(`start: ${message}`);
    process.exit(1);
  },
);
